//! Typed views over frame bytes, checksums and software segmentation.
