//! Units as types, so a cluster index is never mistaken for a byte offset or an LBA.

use std::fmt;

/// Identifies a blob for its whole life; never reused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobId(pub u64);

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Index of a cluster on the device (cluster 0 holds the superblocks and is never
/// allocated, so 0 doubles as "unallocated" in cluster maps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterIdx(pub u64);

impl ClusterIdx {
    /// The "no cluster" marker in cluster maps.
    pub const NONE: ClusterIdx = ClusterIdx(0);

    /// Whether this is a real cluster.
    pub fn is_some(self) -> bool {
        self.0 != 0
    }
}

impl fmt::Display for ClusterIdx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cluster {}", self.0)
    }
}

/// Index of a 4 KiB page on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageIdx(pub u64);

/// Size of a metadata page.
pub const PAGE_SIZE: u32 = 4096;
