//! BlobFS over FUSE: a [`fuser::Filesystem`] backed by a [`blobfs::FileSystem`].
//!
//! - [`BlobFuse`] maps every FUSE request to one `FileSystem` call. Inode numbers are blob
//!   ids; the root directory is blob 1, which is also FUSE's root id. Errors are the errnos of
//!   [`blobfs::Error::errno`].
//! - [`MountOptions`] parses `-o` option strings (as `mount(8)` and fstab give them) and
//!   builds the [`fuser::Config`]: `default_permissions` always (the kernel checks
//!   permissions), `fsname=<image>`, `subtype=blobfs`, several request threads.
//! - Request threads take turns (`threads.rs`): one reads /dev/fuse and handles what
//!   does not block; the others wait until a request is about to block on the device.
//! - [`mount`] and [`Mounted`] mount in-process (a background session with a guard that
//!   unmounts); [`unmount`], [`find_mount`] and [`is_stale`] deal with mounts by path.
//!
//! A clean unmount ends the session, and the session's end (`destroy`) closes the
//! filesystem: dirty data written back, metadata committed, a checkpoint written. The
//! outcome of that close is kept in a [`CloseStatus`].

mod filesystem;
mod mounts;
mod options;
mod threads;

pub use filesystem::{BlobFuse, CloseStatus};
pub use mounts::{
    find_mount, is_stale, lift_strict_dirty_limit, mount, mountpoint_path, mounts, session,
    tune_readahead, unmount, wait_unmounted, MountEntry, Mounted, Unmount,
};
pub use options::{MountOptions, OptionError};

/// The filesystem type (`fuse.` + subtype) BlobFS mounts show in `/proc/mounts`.
pub const FSTYPE: &str = "fuse.blobfs";
