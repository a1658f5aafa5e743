//! Each rule's hit counter, readable while the data path runs: a shared atomic per rule
//! (the uncached lookups count there), plus one [`HitShard`] per thread that counts through
//! the flow cache. A thread alone writes its shard, so it counts with a plain load and store
//! instead of a locked read-modify-write, and threads hitting one rule share no cache line;
//! a read adds them up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// One thread's hit counters for the rules of one [`RuleSet`] (index = position in location
/// order). Only the thread that asked for it ([`RuleSet::new_hit_shard`]) counts into it;
/// anyone reads it.
#[derive(Debug)]
pub struct HitShard(Box<[AtomicU64]>);

impl HitShard {
    /// Counts a hit on the rule at `index` (out of range: nothing). A plain load and store:
    /// correct because the calling thread is the shard's only writer.
    #[inline]
    pub fn count(&self, index: usize) {
        if let Some(hits) = self.0.get(index) {
            hits.store(
                hits.load(Ordering::Relaxed).wrapping_add(1),
                Ordering::Relaxed,
            );
        }
    }
}

/// The hit counters of one rule set's rules (index = position in location order).
#[derive(Debug, Default)]
pub(super) struct HitCounters {
    /// Hits counted without a shard (the uncached path, `RuleSet::lookup`).
    shared: Box<[AtomicU64]>,
    /// Every thread's shard: a registration per thread and rule set, off the data path.
    shards: Mutex<Vec<Arc<HitShard>>>,
}

impl HitCounters {
    /// Counters for `rules` rules, all at zero.
    pub(super) fn new(rules: usize) -> Self {
        HitCounters {
            shared: zeros(rules),
            shards: Mutex::new(Vec::new()),
        }
    }

    /// Counts one hit on the rule at `index` (out of range: nothing).
    #[inline]
    pub(super) fn count(&self, index: usize) {
        if let Some(hits) = self.shared.get(index) {
            hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sets the shared count of the rule at `index` (a rule carried over from an older set).
    pub(super) fn start_at(&self, index: usize, hits: u64) {
        if let Some(counter) = self.shared.get(index) {
            counter.store(hits, Ordering::Relaxed);
        }
    }

    /// A new shard for the calling thread, counted in [`totals`](Self::totals) from now on.
    pub(super) fn new_shard(&self) -> Arc<HitShard> {
        let shard = Arc::new(HitShard(zeros(self.shared.len())));
        self.shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(shard.clone());
        shard
    }

    /// Each rule's hits: its shared counter plus every thread's shard.
    pub(super) fn totals(&self) -> Vec<u64> {
        let mut totals: Vec<u64> = self
            .shared
            .iter()
            .map(|hits| hits.load(Ordering::Relaxed))
            .collect();
        let shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        for shard in shards.iter() {
            for (total, hits) in totals.iter_mut().zip(shard.0.iter()) {
                *total = total.wrapping_add(hits.load(Ordering::Relaxed));
            }
        }
        totals
    }
}

fn zeros(len: usize) -> Box<[AtomicU64]> {
    (0..len).map(|_| AtomicU64::new(0)).collect()
}
