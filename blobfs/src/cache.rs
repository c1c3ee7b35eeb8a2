//! A bounded cache of clean file pages, shared by all files.
//!
//! The device is opened with O_DIRECT, so there is no kernel page cache underneath: this
//! is it. Pages are keyed by (inode, cache generation, page index). A write removes the
//! pages it dirties (dirty pages live with the inode until written back); a truncate or a
//! zeroed gap gives the inode a new generation, which orphans all its cached pages at once
//! (they age out). Generations are unique over the cache's life (an inode dropped from
//! memory and loaded again starts with a fresh one), and inode numbers are never reused,
//! so nothing stale can come back.

use crate::inode::Ino;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// A cached page (4 KiB, or shorter at the end of the blob).
pub(crate) type Page = Arc<[u8]>;

type Key = (Ino, u64, u64);

const SHARDS: usize = 16;

/// Replacement is CLOCK (second chance), not LRU: a hit only sets the entry's reference
/// bit, where an LRU list moved the entry to the front, touching its neighbours' memory.
/// With RocksDB reading random blocks from a cache of 64k pages, the LRU's `get` was 7.5%
/// of db_bench readrandom's CPU time, more than ext4's whole page-cache lookup. The page
/// handle lives in the hash table itself, so a hit reads one bucket and then the page.
struct Shard {
    map: HashMap<Key, Entry, BuildHasherDefault<KeyHasher>>,
    /// The clock: the key held in each slot (`None`: free).
    ring: Vec<Option<Key>>,
    /// The clock hand: the next slot considered for eviction.
    hand: usize,
    cap: usize,
    /// Slots whose page was removed, reused before anything is evicted.
    free: Vec<usize>,
}

struct Entry {
    page: Page,
    referenced: bool,
    slot: usize,
}

impl Shard {
    fn get(&mut self, key: &Key) -> Option<Page> {
        let e = self.map.get_mut(key)?;
        e.referenced = true;
        Some(e.page.clone())
    }

    fn put(&mut self, key: Key, page: Page) {
        if let Some(e) = self.map.get_mut(&key) {
            e.page = page;
            e.referenced = true;
            return;
        }
        let slot = if let Some(i) = self.free.pop() {
            i
        } else if self.ring.len() < self.cap {
            self.ring.push(None);
            self.ring.len() - 1
        } else {
            // Second chance: clear reference bits until an unreferenced (or free) slot.
            loop {
                let i = self.hand;
                self.hand = (self.hand + 1) % self.ring.len();
                let Some(k) = self.ring[i] else { break i };
                match self.map.get_mut(&k) {
                    Some(e) if e.referenced => e.referenced = false,
                    _ => {
                        self.map.remove(&k);
                        break i;
                    }
                }
            }
        };
        self.ring[slot] = Some(key);
        // A new page starts unreferenced: read once and never again, it goes first.
        self.map.insert(
            key,
            Entry {
                page,
                referenced: false,
                slot,
            },
        );
    }

    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.map.remove(key) {
            self.ring[e.slot] = None;
            self.free.push(e.slot);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Hashes a key (three u64 words) with multiply-rotate mixing: keys are inode numbers,
/// generations and page indexes, so no defence against crafted collisions is needed and
/// SipHash's cost is not worth paying on every cached read.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        // Final avalanche so the table's low bits depend on every input bit.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub(crate) struct PageCache {
    shards: Vec<Mutex<Shard>>,
    generations: std::sync::atomic::AtomicU64,
}

impl PageCache {
    /// A cache of about `pages` pages (at least one per shard).
    pub(crate) fn new(pages: usize) -> PageCache {
        let per = pages.div_ceil(SHARDS).max(1);
        PageCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::default(),
                        ring: Vec::new(),
                        hand: 0,
                        cap: per,
                        free: Vec::new(),
                    })
                })
                .collect(),
            generations: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// A generation number never handed out before. Inodes take a new one when loaded
    /// and whenever all their cached pages must go.
    pub(crate) fn new_generation(&self) -> u64 {
        self.generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn shard(&self, ino: Ino, page: u64) -> &Mutex<Shard> {
        // A cheap mix so consecutive pages of one file spread over the shards.
        let h = ino.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ page.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        &self.shards[(h >> 59) as usize % SHARDS]
    }

    pub(crate) fn get(&self, ino: Ino, gen: u64, page: u64) -> Option<Page> {
        self.shard(ino, page).lock().get(&(ino, gen, page))
    }

    /// Whether the page is cached, without marking it used (read-ahead probes).
    pub(crate) fn contains(&self, ino: Ino, gen: u64, page: u64) -> bool {
        self.shard(ino, page)
            .lock()
            .map
            .contains_key(&(ino, gen, page))
    }

    pub(crate) fn put(&self, ino: Ino, gen: u64, page: u64, data: Page) {
        self.shard(ino, page).lock().put((ino, gen, page), data);
    }

    pub(crate) fn remove(&self, ino: Ino, gen: u64, page: u64) {
        self.shard(ino, page).lock().remove(&(ino, gen, page));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_keyed_by_generation() {
        let c = PageCache::new(64);
        for p in 0..1000u64 {
            c.put(1, 0, p, Arc::from(vec![p as u8; 8]));
        }
        let held: usize = c.shards.iter().map(|s| s.lock().len()).sum();
        assert!(held <= 64, "{held} pages held");
        assert!(held >= 32, "{held} pages held: the shards should fill up");
        c.put(2, 0, 5, Arc::from(vec![9u8; 4]));
        assert_eq!(c.get(2, 0, 5).as_deref(), Some(&[9u8; 4][..]));
        assert!(c.contains(2, 0, 5) && !c.contains(2, 1, 5));
        assert_eq!(c.get(2, 1, 5), None);
        c.remove(2, 0, 5);
        assert_eq!(c.get(2, 0, 5), None);
    }

    #[test]
    fn clock_keeps_pages_in_use_and_evicts_the_others() {
        // One shard's worth: every key in the same shard.
        let c = PageCache::new(SHARDS * 4);
        let mut same_shard = (0..10_000u64).filter(|p| std::ptr::eq(c.shard(7, *p), c.shard(7, 0)));
        let keys: Vec<u64> = same_shard.by_ref().take(12).collect();
        // Fill the shard (4 slots), then keep using page 0 while new pages stream in.
        for &k in &keys[..4] {
            c.put(7, 0, k, Arc::from(vec![k as u8; 8]));
        }
        for &k in &keys[4..] {
            assert!(c.get(7, 0, keys[0]).is_some(), "a page in use was evicted");
            c.put(7, 0, k, Arc::from(vec![k as u8; 8]));
        }
        assert!(c.get(7, 0, keys[0]).is_some());
        // Only 4 pages fit; the last one put is there, most streamed ones are gone.
        assert!(c.contains(7, 0, keys[11]));
        let held = keys.iter().filter(|k| c.contains(7, 0, **k)).count();
        assert_eq!(held, 4);
        // A removed page frees its slot for the next one without evicting another.
        c.remove(7, 0, keys[11]);
        let spare = same_shard.next().unwrap();
        c.put(7, 0, spare, Arc::from(vec![1u8; 8]));
        assert!(c.contains(7, 0, keys[0]) && c.contains(7, 0, spare));
        assert_eq!(keys.iter().filter(|k| c.contains(7, 0, **k)).count(), 3);
    }
}
