//! Pure classification: frame in, decision (class, queue, rule) out.
