//! The L2 learning switch that cables the ports together.
//!
//! Source addresses are learned per port (bounded by a per-port MAC limit), entries age out
//! after `ageing` without traffic, and broadcast, multicast and unknown unicast are flooded to
//! every port but the ingress one. The table is sharded by address, each shard behind its own
//! `RwLock`: the data path takes read locks only (a known address refreshes its timestamp
//! through an atomic), so queues of different ports do not serialise on one lock. Time is a
//! coarse clock in seconds that the control thread advances, so the data path never reads the
//! system clock per frame.

pub mod fabric;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crate::stats::{self, SwitchCounters};

pub type Mac = [u8; 6];
pub type PortId = usize;

const SHARDS: usize = 16;

/// Hashes MAC addresses for the table: SipHash (std's default) showed in profiles of the
/// forwarding path, and a table bounded by the per-port MAC limit gains nothing from
/// collision-attack resistance. Folds the bytes, then a multiplicative mix.
#[derive(Default)]
pub struct MacHasher(u64);

impl Hasher for MacHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8) | u64::from(byte);
        }
    }

    fn finish(&self) -> u64 {
        let mixed = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        mixed ^ (mixed >> 29)
    }
}

type MacTable = HashMap<Mac, Arc<Entry>, BuildHasherDefault<MacHasher>>;

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// To one learned port.
    Unicast(PortId),
    /// To every port except the ingress one.
    Flood,
    /// Nowhere: the destination was learned on the ingress port itself.
    Filter,
}

/// Why a frame was refused at ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IngressError {
    #[error("source MAC is multicast or broadcast")]
    MulticastSource,
    #[error("port reached its MAC limit; new source address not learned")]
    MacLimit,
    #[error("source MAC is not the one the port is locked to")]
    MacLocked,
}

/// Which source address a port may send from (`--mac-lock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacLock {
    /// The first source address the port sends from, until its guest disconnects (port
    /// security's "sticky" address).
    Sticky,
    /// This address only.
    Fixed(Mac),
}

/// A port's lock as the data path checks it: the mode, and the locked address as a
/// [`MacKey`] with [`LOCKED`] set (0: none yet).
#[derive(Default)]
struct PortLock {
    mode: std::sync::OnceLock<MacLock>,
    locked: AtomicU64,
}

/// Marks [`PortLock::locked`] as holding an address (a key has 48 bits).
const LOCKED: u64 = 1 << 63;

impl PortLock {
    /// Whether `src` may be sent from this port; a sticky lock takes its first address.
    fn admits(&self, src: MacKey) -> bool {
        let Some(mode) = self.mode.get() else {
            return true;
        };
        let locked = self.locked.load(Ordering::Acquire);
        if locked != 0 {
            return locked == src | LOCKED;
        }
        match mode {
            MacLock::Fixed(mac) => pack_mac(*mac) == src,
            MacLock::Sticky => match self.locked.compare_exchange(
                0,
                src | LOCKED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => true,
                Err(now) => now == src | LOCKED,
            },
        }
    }
}

struct Entry {
    port: AtomicUsize,
    last_seen: AtomicU64,
}

/// Switch settings.
#[derive(Debug, Clone, Copy)]
pub struct SwitchConfig {
    /// Seconds an address stays learned without traffic from it.
    pub ageing_secs: u64,
    /// Most addresses learned per port; further new sources are dropped.
    pub mac_limit: usize,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        // 300 s is the IEEE 802.1D default ageing time.
        SwitchConfig {
            ageing_secs: 300,
            mac_limit: 1024,
        }
    }
}

pub struct Switch {
    config: SwitchConfig,
    shards: Vec<RwLock<MacTable>>,
    /// Learned addresses per port, for the MAC limit.
    learned_per_port: Vec<AtomicUsize>,
    /// Per port, the source address it is locked to, if any.
    locks: Vec<PortLock>,
    now_secs: AtomicU64,
    /// Bumped whenever the table changes, so a sender's cached decision can tell it is stale.
    generation: AtomicU64,
    pub counters: SwitchCounters,
}

/// A sender's memory of its last decision: traffic comes in runs of frames with the same
/// addresses, and while the table does not change (and within the same second, so the
/// source's timestamp stays fresh) the decision holds without taking the table's locks.
#[derive(Default)]
pub struct DecisionCache {
    last: Option<CachedDecision>,
    /// Cache hits not yet added to the switch's counters, by kind of decision: the
    /// counters are shared by every sender, and a locked add per frame on one cache line
    /// would make the senders contend. [`Switch::settle`] adds them once per batch.
    unsettled: [u64; 3],
}

#[derive(Clone, Copy)]
struct CachedDecision {
    ingress: PortId,
    src: MacKey,
    dst: MacKey,
    generation: u64,
    second: u64,
    forward: Forward,
}

/// A MAC as a number (its six bytes little-endian), the form the data path handles them in.
/// As `[u8; 6]` values, LLVM kept them on the stack in 4- and 2-byte pieces and read them
/// back with loads spanning both, which cannot be forwarded from those stores and wait for
/// them to reach the cache: most of the switch's time per frame.
pub type MacKey = u64;

#[inline(always)]
pub fn pack_mac(mac: Mac) -> MacKey {
    let [a, b, c, d, e, f] = mac;
    u64::from_le_bytes([a, b, c, d, e, f, 0, 0])
}

#[inline(always)]
pub fn unpack_mac(key: MacKey) -> Mac {
    let [a, b, c, d, e, f, _, _] = key.to_le_bytes();
    [a, b, c, d, e, f]
}

fn shard_of(mac: &Mac) -> usize {
    // The low bytes of a MAC vary most (OUI first); fold them.
    (mac[5] as usize ^ (mac[4] as usize) << 3 ^ mac[3] as usize) % SHARDS
}

fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

impl Switch {
    pub fn new(ports: usize, config: SwitchConfig) -> Self {
        Switch {
            config,
            shards: (0..SHARDS)
                .map(|_| RwLock::new(MacTable::default()))
                .collect(),
            learned_per_port: (0..ports).map(|_| AtomicUsize::new(0)).collect(),
            locks: (0..ports).map(|_| PortLock::default()).collect(),
            now_secs: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            counters: SwitchCounters::default(),
        }
    }

    /// Locks `port` to one source address (see [`MacLock`]); set once, at start.
    pub fn set_mac_lock(&self, port: PortId, lock: MacLock) {
        if let Some(port_lock) = self.locks.get(port) {
            let _ = port_lock.mode.set(lock);
        }
    }

    /// Advances the coarse clock (seconds since start).
    pub fn set_time(&self, secs: u64) {
        self.now_secs.store(secs, Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        self.now_secs.load(Ordering::Relaxed)
    }

    fn fresh(&self, entry: &Entry) -> bool {
        self.now()
            .saturating_sub(entry.last_seen.load(Ordering::Relaxed))
            <= self.config.ageing_secs
    }

    /// Learns the source of a frame arriving on `ingress`.
    pub fn learn(&self, ingress: PortId, src: &Mac) -> Result<(), IngressError> {
        if is_multicast(src) {
            return Err(IngressError::MulticastSource);
        }
        let shard = &self.shards[shard_of(src)];
        {
            let table = shard.read().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = table.get(src)
                && entry.port.load(Ordering::Relaxed) == ingress
            {
                entry.last_seen.store(self.now(), Ordering::Relaxed);
                return Ok(());
            }
        }
        let mut table = shard.write().unwrap_or_else(|p| p.into_inner());
        let now = self.now();
        match table.get(src) {
            Some(entry) if entry.port.load(Ordering::Relaxed) == ingress => {
                entry.last_seen.store(now, Ordering::Relaxed);
                return Ok(());
            }
            Some(entry) => {
                // The station moved to another port (a VM restarted elsewhere).
                let old = entry.port.load(Ordering::Relaxed);
                if !self.reserve(ingress) {
                    return Err(IngressError::MacLimit);
                }
                self.release(old);
                entry.port.store(ingress, Ordering::Relaxed);
                entry.last_seen.store(now, Ordering::Relaxed);
            }
            None => {
                if !self.reserve(ingress) {
                    return Err(IngressError::MacLimit);
                }
                table.insert(
                    *src,
                    Arc::new(Entry {
                        port: AtomicUsize::new(ingress),
                        last_seen: AtomicU64::new(now),
                    }),
                );
            }
        }
        self.generation.fetch_add(1, Ordering::Release);
        stats::inc(&self.counters.learned);
        Ok(())
    }

    /// Learns the source and decides where the frame goes, through the sender's cache.
    /// The addresses come as [`MacKey`]s, compared in registers against the sender's last
    /// decision.
    pub fn decide(
        &self,
        ingress: PortId,
        src_key: MacKey,
        dst_key: MacKey,
        cache: &mut DecisionCache,
    ) -> Result<Forward, IngressError> {
        let generation = self.generation.load(Ordering::Acquire);
        let second = self.now();
        if let Some(hit) = cache.last.filter(|c| {
            c.ingress == ingress
                && c.src == src_key
                && c.dst == dst_key
                && c.generation == generation
                && c.second == second
        }) {
            let kind = match hit.forward {
                Forward::Unicast(_) => 0,
                Forward::Flood => 1,
                Forward::Filter => 2,
            };
            cache.unsettled[kind] += 1;
            return Ok(hit.forward);
        }
        // Checked where a decision is made, not on a cached one: a cached decision was
        // admitted, and a lock changes only with a flush (a disconnect), which clears the
        // caches.
        if self
            .locks
            .get(ingress)
            .is_some_and(|lock| !lock.admits(src_key))
        {
            return Err(IngressError::MacLocked);
        }
        self.learn(ingress, &unpack_mac(src_key))?;
        let forward = self.lookup(ingress, &unpack_mac(dst_key));
        cache.last = Some(CachedDecision {
            ingress,
            src: src_key,
            dst: dst_key,
            generation,
            second,
            forward,
        });
        Ok(forward)
    }

    /// Adds a sender's cached decisions to the switch's counters (end of its batch).
    pub fn settle(&self, cache: &mut DecisionCache) {
        let counters = [
            &self.counters.forwarded,
            &self.counters.flooded,
            &self.counters.filtered_same_port,
        ];
        for (counter, count) in counters.into_iter().zip(&mut cache.unsettled) {
            if *count > 0 {
                stats::add(counter, std::mem::take(count));
            }
        }
    }

    fn reserve(&self, port: PortId) -> bool {
        let Some(count) = self.learned_per_port.get(port) else {
            return false;
        };
        count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.config.mac_limit).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self, port: PortId) {
        if let Some(count) = self.learned_per_port.get(port) {
            let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Decides where a frame to `dst` arriving on `ingress` goes.
    pub fn lookup(&self, ingress: PortId, dst: &Mac) -> Forward {
        if is_multicast(dst) {
            stats::inc(&self.counters.flooded);
            return Forward::Flood;
        }
        let table = self.shards[shard_of(dst)]
            .read()
            .unwrap_or_else(|p| p.into_inner());
        match table.get(dst) {
            Some(entry) if self.fresh(entry) => {
                let port = entry.port.load(Ordering::Relaxed);
                if port == ingress {
                    stats::inc(&self.counters.filtered_same_port);
                    Forward::Filter
                } else {
                    stats::inc(&self.counters.forwarded);
                    Forward::Unicast(port)
                }
            }
            _ => {
                stats::inc(&self.counters.flooded);
                Forward::Flood
            }
        }
    }

    /// Removes entries not seen for the ageing time. Called about once a second.
    pub fn age(&self) {
        for shard in &self.shards {
            let mut table = shard.write().unwrap_or_else(|p| p.into_inner());
            table.retain(|_, entry| {
                let keep = self.fresh(entry);
                if !keep {
                    self.release(entry.port.load(Ordering::Relaxed));
                    self.generation.fetch_add(1, Ordering::Release);
                    stats::inc(&self.counters.aged);
                }
                keep
            });
        }
    }

    /// Forgets every address learned on a port (its guest went away).
    pub fn flush_port(&self, port: PortId) {
        for shard in &self.shards {
            let mut table = shard.write().unwrap_or_else(|p| p.into_inner());
            table.retain(|_, entry| entry.port.load(Ordering::Relaxed) != port);
        }
        if let Some(lock) = self.locks.get(port)
            && lock.mode.get() == Some(&MacLock::Sticky)
        {
            // The next guest on the port may use another address.
            lock.locked.store(0, Ordering::Release);
        }
        self.generation.fetch_add(1, Ordering::Release);
        if let Some(count) = self.learned_per_port.get(port) {
            count.store(0, Ordering::Relaxed);
        }
    }

    /// The learned table: (mac, port, seconds since last seen).
    pub fn entries(&self) -> Vec<(Mac, PortId, u64)> {
        let now = self.now();
        let mut all = Vec::new();
        for shard in &self.shards {
            let table = shard.read().unwrap_or_else(|p| p.into_inner());
            for (mac, entry) in table.iter() {
                all.push((
                    *mac,
                    entry.port.load(Ordering::Relaxed),
                    now.saturating_sub(entry.last_seen.load(Ordering::Relaxed)),
                ));
            }
        }
        all.sort();
        all
    }
}

pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [2, 0, 0, 0, 0, 0xa];
    const B: Mac = [2, 0, 0, 0, 0, 0xb];
    const C: Mac = [2, 0, 0, 0, 0, 0xc];
    const BROADCAST: Mac = [0xff; 6];

    fn switch() -> Switch {
        Switch::new(
            3,
            SwitchConfig {
                ageing_secs: 10,
                mac_limit: 2,
            },
        )
    }

    #[test]
    fn unknown_unicast_and_broadcast_flood() {
        let sw = switch();
        assert_eq!(sw.lookup(0, &B), Forward::Flood);
        assert_eq!(sw.lookup(0, &BROADCAST), Forward::Flood);
    }

    #[test]
    fn learned_address_is_forwarded_to_its_port() {
        let sw = switch();
        sw.learn(1, &B).unwrap();
        assert_eq!(sw.lookup(0, &B), Forward::Unicast(1));
        assert_eq!(sw.lookup(1, &B), Forward::Filter);
    }

    #[test]
    fn station_moving_ports_is_relearned() {
        let sw = switch();
        sw.learn(1, &B).unwrap();
        sw.learn(2, &B).unwrap();
        assert_eq!(sw.lookup(0, &B), Forward::Unicast(2));
    }

    #[test]
    fn entries_age_out() {
        let sw = switch();
        sw.learn(1, &B).unwrap();
        sw.set_time(11);
        assert_eq!(sw.lookup(0, &B), Forward::Flood);
        sw.age();
        assert!(sw.entries().is_empty());
        assert_eq!(sw.counters.aged.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn mac_limit_refuses_new_sources_only() {
        let sw = switch();
        sw.learn(0, &A).unwrap();
        sw.learn(0, &B).unwrap();
        assert_eq!(
            sw.learn(0, &[2, 0, 0, 0, 0, 0xc]),
            Err(IngressError::MacLimit)
        );
        // Known sources keep working.
        assert_eq!(sw.learn(0, &A), Ok(()));
        // Ageing frees room.
        sw.set_time(100);
        sw.age();
        assert_eq!(sw.learn(0, &[2, 0, 0, 0, 0, 0xc]), Ok(()));
    }

    #[test]
    fn cached_decisions_follow_table_changes() {
        let sw = switch();
        let mut cache = DecisionCache::default();
        assert_eq!(
            sw.decide(0, pack_mac(A), pack_mac(B), &mut cache),
            Ok(Forward::Flood)
        );
        sw.learn(1, &B).unwrap();
        assert_eq!(
            sw.decide(0, pack_mac(A), pack_mac(B), &mut cache),
            Ok(Forward::Unicast(1))
        );
        // B moves: the cached decision must not survive.
        sw.learn(2, &B).unwrap();
        assert_eq!(
            sw.decide(0, pack_mac(A), pack_mac(B), &mut cache),
            Ok(Forward::Unicast(2))
        );
        sw.flush_port(2);
        assert_eq!(
            sw.decide(0, pack_mac(A), pack_mac(B), &mut cache),
            Ok(Forward::Flood)
        );
        assert_eq!(
            sw.decide(0, pack_mac(BROADCAST), pack_mac(B), &mut cache),
            Err(IngressError::MulticastSource)
        );
    }

    #[test]
    fn multicast_source_is_refused() {
        assert_eq!(
            switch().learn(0, &BROADCAST),
            Err(IngressError::MulticastSource)
        );
    }

    #[test]
    fn flushing_a_port_forgets_its_addresses() {
        let sw = switch();
        sw.learn(1, &B).unwrap();
        sw.learn(2, &A).unwrap();
        sw.flush_port(1);
        assert_eq!(sw.lookup(0, &B), Forward::Flood);
        assert_eq!(sw.lookup(0, &A), Forward::Unicast(2));
    }

    #[test]
    fn a_locked_port_sends_from_its_address_only() {
        let sw = switch();
        let mut cache = DecisionCache::default();
        sw.set_mac_lock(0, MacLock::Sticky);
        sw.set_mac_lock(1, MacLock::Fixed(B));
        // Sticky: the first address is taken; another is refused, the first still passes.
        assert!(sw.decide(0, pack_mac(A), pack_mac(B), &mut cache).is_ok());
        assert_eq!(
            sw.decide(0, pack_mac(C), pack_mac(B), &mut cache),
            Err(IngressError::MacLocked)
        );
        assert!(sw.decide(0, pack_mac(A), pack_mac(C), &mut cache).is_ok());
        // Fixed: only the configured address.
        assert_eq!(
            sw.decide(1, pack_mac(A), pack_mac(C), &mut cache),
            Err(IngressError::MacLocked)
        );
        assert!(sw.decide(1, pack_mac(B), pack_mac(C), &mut cache).is_ok());
        // A disconnect frees a sticky lock for the next guest.
        sw.flush_port(0);
        assert!(sw.decide(0, pack_mac(C), pack_mac(B), &mut cache).is_ok());
        assert_eq!(
            sw.decide(0, pack_mac(A), pack_mac(B), &mut cache),
            Err(IngressError::MacLocked)
        );
    }
}
