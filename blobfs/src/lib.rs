//! BlobFS: a thin filesystem on the blobstore.
//!
//! A file, directory or symlink is one blob; its inode record and a directory's entries are
//! internal xattrs of the blob (see [`inode`] for the format). Every namespace change
//! (create, mkdir, link, unlink, rmdir, rename with replace, across directories) is one
//! blobstore transaction, so it is atomic across a crash. `fsync` writes back the file's
//! data, then queues its inode record, then commits (the commit flushes data before the
//! record): after it returns, a crash loses nothing of that file, and a size never covers
//! bytes that were not written.

mod cache;
pub mod check;
mod error;
mod file;
pub mod fs;
pub mod inode;
pub mod snapshots;

pub use check::{check_fs, is_blobfs, repair_fs, Fix, FsCheck, FsFinding, Severity};
pub use error::{Error, Result};
pub use fs::{Attr, DirEntry, FileSystem, FsOptions, RenameFlags, SetAttr, StatFs, PAGE};
pub use inode::{Ino, Kind, Time, ROOT_INO};
pub use snapshots::{SnapInfo, SnapKind};
