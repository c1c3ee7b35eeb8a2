//! A log-structured blobstore for a raw NVMe namespace.
//!
//! Blobs are ordered lists of clusters with flags and xattrs; their metadata lives in a
//! log of checksummed, hash-chained records that starts with a checkpoint (a snapshot of
//! every blob). Loading replays the log since the last checkpoint, never scanning the
//! device. See `docs/design.md` for the on-disk format byte by byte and the durability
//! rules, and [`store`] for the commit protocol.

mod alloc;
pub mod blob;
pub mod channel;
pub mod check;
pub mod clones;
mod error;
pub mod format;
pub mod fsck;
pub mod journal;
pub mod meta;
pub mod recovery;
pub mod store;
pub mod units;

pub use alloc::Allocator;
pub use blob::Blob;
pub use channel::{IoChannel, IoCompletion};
pub use check::CheckReport;
pub use clones::Family;
pub use error::{Error, Result};
pub use format::record::{data_crc, data_crc_append, data_crc_combine, zeros_crc, XattrNs};
pub use meta::{BlobMeta, FLAG_READ_ONLY, FLAG_THIN};
pub use store::{
    BlobOptions, Blobstore, FormatOptions, MetadataLayout, OpenOptions, StoreInfo, Transaction,
    Usage,
};
pub use units::{BlobId, ClusterIdx, PageIdx, PAGE_SIZE};
