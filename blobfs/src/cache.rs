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
use lru::LruCache;
use parking_lot::Mutex;
use std::num::NonZeroUsize;
use std::sync::Arc;

/// A cached page (4 KiB, or shorter at the end of the blob).
pub(crate) type Page = Arc<[u8]>;

type Key = (Ino, u64, u64);

const SHARDS: usize = 16;

pub(crate) struct PageCache {
    shards: Vec<Mutex<LruCache<Key, Page>>>,
    generations: std::sync::atomic::AtomicU64,
}

impl PageCache {
    /// A cache of about `pages` pages (at least one per shard).
    pub(crate) fn new(pages: usize) -> PageCache {
        let per = NonZeroUsize::new(pages.div_ceil(SHARDS).max(1)).unwrap_or(NonZeroUsize::MIN);
        PageCache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per)))
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

    fn shard(&self, ino: Ino, page: u64) -> &Mutex<LruCache<Key, Page>> {
        // A cheap mix so consecutive pages of one file spread over the shards.
        let h = ino.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ page.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        &self.shards[(h >> 59) as usize % SHARDS]
    }

    pub(crate) fn get(&self, ino: Ino, gen: u64, page: u64) -> Option<Page> {
        self.shard(ino, page).lock().get(&(ino, gen, page)).cloned()
    }

    /// Whether the page is cached, without making it recently used (read-ahead probes).
    pub(crate) fn contains(&self, ino: Ino, gen: u64, page: u64) -> bool {
        self.shard(ino, page).lock().contains(&(ino, gen, page))
    }

    pub(crate) fn put(&self, ino: Ino, gen: u64, page: u64, data: Page) {
        self.shard(ino, page).lock().put((ino, gen, page), data);
    }

    pub(crate) fn remove(&self, ino: Ino, gen: u64, page: u64) {
        self.shard(ino, page).lock().pop(&(ino, gen, page));
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
        c.put(2, 0, 5, Arc::from(vec![9u8; 4]));
        assert_eq!(c.get(2, 0, 5).as_deref(), Some(&[9u8; 4][..]));
        assert!(c.contains(2, 0, 5) && !c.contains(2, 1, 5));
        assert_eq!(c.get(2, 1, 5), None);
        c.remove(2, 0, 5);
        assert_eq!(c.get(2, 0, 5), None);
    }
}
