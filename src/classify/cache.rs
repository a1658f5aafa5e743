//! An exact-match flow cache in front of the rule lookup (the idea of Open vSwitch's exact
//! match cache, or of a NIC's flow-table cache): the fields of a parsed frame that the
//! decision depends on, packed into words ([`PackedKey::of`]), map to the decision
//! the classifier computed for them the last time. A frame of a flow seen recently then costs
//! a multiply-add hash and a compare of four words (plain IPv4; twelve with IPv6 or VXLAN)
//! instead of several bucket probes, the trust mode, the Toeplitz hash and the indirection
//! table, which is why the cached value is the whole [`Decision`], not only the rule.
//!
//! Exactness: the key holds every field the rules, the trust mode and RSS read (both layers'
//! addresses and their family, protocol, ports, DSCP, the outermost VLAN tag's id and PCP,
//! the fragment flag, the VNI, and which of them are present), plus the id of the
//! [`Classifier`](super::Classifier) that made the decision; a hit compares the whole key, so
//! it is never a false hit. A classifier is immutable once built and ids are never reused, so
//! replacing the rules (a new classifier) makes every older entry unreachable: `rule add` and
//! `rule del` take effect on the very next frame with no flush and no shared state to update.
//! The rule's hit counter is counted by the classifier on hits and misses alike.
//!
//! Sharing: a classifier is read by every sender thread at once (one per TX queue of every
//! port). Rather than a lock-free shared table (a key of up to 96 bytes cannot be written
//! atomically), each thread has its own cache ([`with_thread_cache`]) serving every classifier
//! it meets (the id in the key keeps them apart): no lock, no atomic, no cache line shared
//! between threads on the data path.
//!
//! Bounds: [`FlowCache::SETS`] sets of two entries (4096 entries, 512 KiB per thread,
//! allocated at the thread's first miss), never growing. A miss computes the decision as
//! without a cache and writes it over the set's entry filled longer ago, so a guest spraying
//! random flows costs at most one miss and one fill per frame, and a flow of a steady
//! workload survives one colliding newcomer. When most lookups of a thread miss (a flood of
//! new flows), only one lookup in 16 probes the table and one such miss in 16 fills it: the
//! flood then costs little more than it would without a cache, and the thread's steady flows
//! mostly stay cached for when it is over.

use std::cell::RefCell;

use std::sync::Arc;

use super::Decision;
use super::parse::{PACKED_WORDS, PackedKey};
use super::rules::{HitShard, RuleSet};

/// Key words compared on every probe: the classifier id, the misc word and, for a plain IPv4
/// frame, its addresses and meta word: the whole key of the most common frames.
const HEAD_WORDS: usize = 4;
const TAIL_WORDS: usize = PACKED_WORDS - HEAD_WORDS;

/// The cache key: a [`PackedKey`] whose word 0 the classifier set to its id (never 0, so an
/// empty entry never matches).
pub type CacheKey = PackedKey;

/// The first four words and the rest of a key.
#[inline(always)]
fn split(key: &CacheKey) -> (&[u64; HEAD_WORDS], &[u64; TAIL_WORDS]) {
    let (head, tail) = key
        .words
        .split_first_chunk::<HEAD_WORDS>()
        .unwrap_or((&[0; HEAD_WORDS], &[]));
    let tail = tail.first_chunk::<TAIL_WORDS>().unwrap_or(&[0; TAIL_WORDS]);
    (head, tail)
}

/// A 64-bit hash for the set index, short in latency (it is on the critical path of every
/// frame: parse, pack, hash, load the set, compare): the words rotated by distinct amounts and
/// XORed (independent one-cycle operations), then one multiply whose top bits are the index.
/// Not keyed and not strong: flows that collide only share a set of two ways, which costs
/// them misses, never a wrong answer, and a guest making its own flows collide gains nothing
/// over sending new flows.
#[inline(always)]
fn hash(head: &[u64; HEAD_WORDS], tail: Option<&[u64; TAIL_WORDS]>) -> u64 {
    const HEAD_ROTATIONS: [u32; HEAD_WORDS] = [0, 43, 0, 21];
    const TAIL_ROTATIONS: [u32; TAIL_WORDS] = [7, 29, 51, 13, 37, 59, 17, 47];
    let mut folded = 0u64;
    for (word, rotation) in head.iter().zip(HEAD_ROTATIONS) {
        folded ^= word.rotate_left(rotation);
    }
    if let Some(tail) = tail {
        for (word, rotation) in tail.iter().zip(TAIL_ROTATIONS) {
            folded ^= word.rotate_left(rotation);
        }
    }
    folded.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Equality of word arrays without early exits (compiles to a few vector compares).
#[inline(always)]
fn same_words<const N: usize>(a: &[u64; N], b: &[u64; N]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u64, |diff, (x, y)| diff | (x ^ y))
        == 0
}

/// What the cache remembers for a key: the classifier's decision and the index of the rule
/// that made it (to count the hit), if one did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cached {
    pub rule_index: Option<u32>,
    pub decision: Decision,
}

/// One entry: one cache line, all that a probe reads for a plain IPv4 frame (and for choosing
/// the victim of a fill). The rest of a longer key is in [`FlowCache`]'s `tails`.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Entry {
    head: [u64; HEAD_WORDS],
    value: Cached,
    /// When the entry was filled ([`FlowCache`]'s fill count): the older way of a set is
    /// the victim of the next fill.
    filled: u32,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 64);

impl Entry {
    const EMPTY: Entry = Entry {
        head: [0; HEAD_WORDS],
        filled: 0,
        value: Cached {
            rule_index: None,
            decision: Decision {
                class: super::Class::Normal,
                queue: super::QueueChoice::Default(0),
                rule: None,
                drop: false,
                parse_error: None,
            },
        },
    };
}

/// Lookups over which the miss rate is estimated.
const WINDOW: u32 = 1024;
/// A window with more misses than this (in percent) means a flood of new flows.
const THRASH_PERCENT: u32 = 75;
/// While flooded, only one lookup in this many probes the table, and one miss in this many
/// fills it (Open vSwitch's exact match cache inserts with a probability for the same
/// reason): probing and filling for every frame of a flood would add the wait for two cache
/// lines and a write to the cost of the rule lookup it does anyway, and evict the thread's
/// steady flows for entries never hit again. The sampled probes keep measuring the miss rate,
/// so the cache is used fully again once a window of them mostly hits.
const THRASH_FILL_EVERY: u32 = 16;

/// A two-way set-associative table of [`Entry`]s.
pub struct FlowCache {
    /// `2 * sets` entries (none until the first miss); set `s` is entries `2s` and `2s + 1`.
    entries: Vec<Entry>,
    /// The key words past the head of each entry (all 0 for a short key): apart, so that the
    /// probes of plain IPv4 frames touch one cache line per way and the table's hot part
    /// spans half the pages.
    tails: Vec<[u64; TAIL_WORDS]>,
    sets: usize,
    /// Fills so far (wrapping: after a wrap, a victim may be the newer way for a while, which
    /// costs a miss, never a wrong answer).
    fills: u32,
    /// Lookups so far (wrapping), and where the current window of the miss-rate estimate
    /// started.
    lookups: u32,
    window_start: u32,
    window_misses: u32,
    /// The last window missed more than [`THRASH_PERCENT`] of its lookups (a flood of new
    /// flows): only one miss in [`THRASH_FILL_EVERY`] fills.
    thrashing: bool,
    misses_unfilled: u32,
    /// Lookups answered without a probe since the last probe, while thrashing.
    unprobed: u32,
    /// `64 - log2(sets)`: the set is the top bits of the hash.
    set_shift: u32,
    /// This thread's hit shards, by classifier id, the last used first. Shards of rule sets
    /// that are gone (the thread holds the last reference) are dropped when a new one is
    /// added, so there are at most as many as live classifiers the thread counted hits for.
    shards: Vec<(u64, Arc<HitShard>)>,
}

impl FlowCache {
    /// Sets of the per-thread cache: 4096 entries, enough for the active flows of a busy
    /// port many times over, small enough (256 KiB of entries, 256 KiB of key tails) to stay
    /// in a core's L2 cache.
    pub const SETS: usize = 2048;

    /// A cache of `sets` sets (rounded up to a power of two), allocated on first use.
    pub const fn new(sets: usize) -> Self {
        let sets = if sets <= 1 {
            1
        } else {
            sets.next_power_of_two()
        };
        FlowCache {
            entries: Vec::new(),
            tails: Vec::new(),
            sets,
            fills: 0,
            lookups: 0,
            window_start: 0,
            window_misses: 0,
            thrashing: false,
            misses_unfilled: 0,
            unprobed: 0,
            shards: Vec::new(),
            set_shift: 64 - sets.trailing_zeros(),
        }
    }

    /// The value cached for `key`, else `compute()`'s, which is then cached.
    #[inline]
    pub fn get_or_insert(&mut self, key: &CacheKey, compute: impl FnOnce() -> Cached) -> Cached {
        if self.thrashing {
            self.unprobed += 1;
            if self.unprobed < THRASH_FILL_EVERY {
                return compute();
            }
            self.unprobed = 0;
            // Probes that hit must end a window too, or a flood that stopped would never be
            // noticed (the normal path ends windows at misses only, to keep hits cheap).
            self.end_window_if_due();
        }
        self.lookups = self.lookups.wrapping_add(1);
        let (head, full_tail) = split(key);
        let tail = (key.len > HEAD_WORDS).then_some(full_tail);
        // A shift by 64 (one set) would overflow: `checked_shr` makes it set 0.
        let set = hash(head, tail).checked_shr(self.set_shift).unwrap_or(0) as usize;
        let first = 2 * set;
        let Some([a, b]) = self.entries.get(first..first + 2) else {
            return self.fill_miss(first, head, full_tail, compute);
        };
        if same_words(&a.head, head) && self.tail_matches(first, tail) {
            return a.value;
        }
        if same_words(&b.head, head) && self.tail_matches(first + 1, tail) {
            return b.value;
        }
        self.fill_miss(first, head, full_tail, compute)
    }

    /// Whether entry `index`, whose head equals the key's, holds the key's `tail` (`None`: a
    /// short key). A short key differs from a long one in the misc word (in the head), so an
    /// entry with a short key's head is short too and its tail all 0 like the key's.
    #[inline(always)]
    fn tail_matches(&self, index: usize, tail: Option<&[u64; TAIL_WORDS]>) -> bool {
        match tail {
            None => true,
            Some(tail) => self
                .tails
                .get(index)
                .is_some_and(|stored| same_words(stored, tail)),
        }
    }

    /// Counts a hit on rule `index` of `rules` (those of classifier `classifier_id`) in this
    /// thread's shard.
    #[inline]
    pub fn count_hit(&mut self, classifier_id: u64, rules: &RuleSet, index: usize) {
        match self.shards.first() {
            Some((id, shard)) if *id == classifier_id => shard.count(index),
            _ => self.count_hit_other(classifier_id, rules, index),
        }
    }

    /// [`count_hit`](Self::count_hit) for a classifier other than the last one: moves its
    /// shard to the front, registering one first if the thread has none.
    #[inline(never)]
    fn count_hit_other(&mut self, classifier_id: u64, rules: &RuleSet, index: usize) {
        match self.shards.iter().position(|(id, _)| *id == classifier_id) {
            Some(position) => self.shards[..=position].rotate_right(1),
            None => {
                self.shards
                    .retain(|(_, shard)| Arc::strong_count(shard) > 1);
                self.shards
                    .insert(0, (classifier_id, rules.new_hit_shard()));
            }
        }
        if let Some((_, shard)) = self.shards.first() {
            shard.count(index);
        }
    }

    /// Ends the miss-rate window once it has [`WINDOW`] lookups, judging whether it was a
    /// flood.
    #[inline]
    fn end_window_if_due(&mut self) {
        let window = self.lookups.wrapping_sub(self.window_start);
        if window >= WINDOW {
            self.thrashing =
                u64::from(self.window_misses) * 100 > u64::from(window) * u64::from(THRASH_PERCENT);
            self.window_start = self.lookups;
            self.window_misses = 0;
        }
    }

    /// The miss path, kept out of line so the hit path stays small. Allocates the table on
    /// first use (a thread that never classifies with rules never pays for it).
    #[inline(never)]
    fn fill_miss(
        &mut self,
        first: usize,
        head: &[u64; HEAD_WORDS],
        tail: &[u64; TAIL_WORDS],
        compute: impl FnOnce() -> Cached,
    ) -> Cached {
        let value = compute();
        self.window_misses += 1;
        self.end_window_if_due();
        if self.thrashing {
            self.misses_unfilled += 1;
            if self.misses_unfilled < THRASH_FILL_EVERY {
                return value;
            }
            self.misses_unfilled = 0;
        }
        if self.entries.is_empty() {
            self.entries = vec![Entry::EMPTY; 2 * self.sets];
            self.tails = vec![[0; TAIL_WORDS]; 2 * self.sets];
        }
        self.fills = self.fills.wrapping_add(1);
        if let Some([a, b]) = self.entries.get(first..first + 2) {
            // The way filled longer ago goes (both heads were just read by the probe, so
            // this reads no new memory); a fresh set fills `a` first.
            let victim = if b.filled < a.filled {
                first + 1
            } else {
                first
            };
            if let (Some(entry), Some(stored_tail)) =
                (self.entries.get_mut(victim), self.tails.get_mut(victim))
            {
                *entry = Entry {
                    head: *head,
                    value,
                    filled: self.fills,
                };
                *stored_tail = *tail;
            }
        }
        value
    }
}

thread_local! {
    /// This thread's cache.
    static THREAD_CACHE: RefCell<FlowCache> = const { RefCell::new(FlowCache::new(FlowCache::SETS)) };
}

/// Runs `f` with this thread's cache; `None` (and `f` not run) only while the thread is being
/// torn down or re-entered, when the caller classifies without the cache.
#[inline]
pub fn with_thread_cache<R>(f: impl FnOnce(&mut FlowCache) -> R) -> Option<R> {
    THREAD_CACHE
        .try_with(|cell| Some(f(&mut *cell.try_borrow_mut().ok()?)))
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests;
