//! Cluster allocation: a bitmap with a next-fit cursor.
//!
//! The bitmap is not stored on disk: it is rebuilt at load from the blob cluster maps and the
//! log segments, so its cost is memory proportional to the device (one bit per cluster) and
//! never reads proportional to the device.

use crate::units::ClusterIdx;

/// Which clusters are in use.
#[derive(Clone, Debug)]
pub struct Allocator {
    words: Vec<u64>,
    count: u64,
    used: u64,
    cursor: u64,
}

impl Allocator {
    /// All clusters free except cluster 0 (superblocks).
    pub fn new(count: u64) -> Allocator {
        let mut a = Allocator {
            words: vec![0; count.div_ceil(64) as usize],
            count,
            used: 0,
            cursor: 1,
        };
        a.claim(ClusterIdx(0));
        a
    }

    /// Total clusters.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Clusters in use.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Clusters free.
    pub fn free(&self) -> u64 {
        self.count - self.used
    }

    pub fn is_used(&self, c: ClusterIdx) -> bool {
        c.0 < self.count && self.words[(c.0 / 64) as usize] & (1 << (c.0 % 64)) != 0
    }

    /// Marks `c` used; returns false if it already was (or is out of range).
    pub fn claim(&mut self, c: ClusterIdx) -> bool {
        if c.0 >= self.count || self.is_used(c) {
            return false;
        }
        self.words[(c.0 / 64) as usize] |= 1 << (c.0 % 64);
        self.used += 1;
        true
    }

    /// Marks `c` free; returns false if it was not used.
    pub fn release(&mut self, c: ClusterIdx) -> bool {
        if c.0 == 0 || !self.is_used(c) {
            return false;
        }
        self.words[(c.0 / 64) as usize] &= !(1 << (c.0 % 64));
        self.used -= 1;
        true
    }

    /// Allocates one cluster, next-fit from the cursor so that a file growing by appends
    /// gets neighbouring clusters.
    pub fn alloc(&mut self) -> Option<ClusterIdx> {
        if self.free() == 0 {
            return None;
        }
        let start = self.cursor.clamp(1, self.count);
        let c = self
            .find_free(start, self.count)
            .or_else(|| self.find_free(1, start))?;
        self.claim(c);
        self.cursor = c.0 + 1;
        Some(c)
    }

    fn find_free(&self, from: u64, to: u64) -> Option<ClusterIdx> {
        let mut i = from;
        while i < to {
            let w = self.words[(i / 64) as usize];
            if w == u64::MAX {
                i = (i / 64 + 1) * 64;
                continue;
            }
            // First zero bit at or after i within this word.
            let shifted = !w >> (i % 64);
            if shifted == 0 {
                i = (i / 64 + 1) * 64;
                continue;
            }
            let c = i + u64::from(shifted.trailing_zeros());
            return (c < to).then_some(ClusterIdx(c));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_fit_and_wrap() {
        let mut a = Allocator::new(130);
        assert_eq!(a.used(), 1);
        let c: Vec<u64> = (0..5).map(|_| a.alloc().unwrap().0).collect();
        assert_eq!(c, vec![1, 2, 3, 4, 5]);
        assert!(a.release(ClusterIdx(2)));
        // Next-fit continues forward before reusing the hole.
        assert_eq!(a.alloc().unwrap().0, 6);
        for _ in 7..130 {
            a.alloc().unwrap();
        }
        assert_eq!(a.alloc().unwrap().0, 2);
        assert_eq!(a.alloc(), None);
        assert_eq!(a.free(), 0);
        assert!(!a.claim(ClusterIdx(5)));
        assert!(!a.claim(ClusterIdx(500)));
        assert!(!a.release(ClusterIdx(0)));
    }
}
