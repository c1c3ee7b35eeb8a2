//! RocksDB on BlobFS: a `rocksdb::FileSystem` whose files live in a BlobFS image.
//!
//! Two halves:
//!
//! - `shim/blobfs_fs.cc` (C++, built by `build.rs` against the system librocksdb)
//!   implements `rocksdb::FileSystem` and its file, directory, logger and lock objects, and
//!   registers a factory for `blobfs://IMAGE` URIs with `ObjectLibrary::Default()` in a
//!   static initializer. Preloaded into the stock tools (`LD_PRELOAD=.../libblobfs_rocksdb.so
//!   db_bench --fs_uri=blobfs:///tmp/db.img ...`) it makes them run on BlobFS unchanged.
//! - This crate (Rust) implements the narrow C ABI the shim calls (`shim/blobfs_ffi.h`,
//!   [`ffi`]) over [`blobfs::FileSystem`]: a process-wide registry of open images
//!   ([`mount`]), path-based operations ([`ops`]), URIs ([`uri`]).
//!
//! Rust programs using the `rocksdb` crate (`=0.20.1`, linked to the same system
//! librocksdb; re-exported as [`rocksdb`]) get the same FileSystem: [`env()`] gives a
//! `rocksdb::Env` on a BlobFS image for `Options::set_env` (see `src/env.rs` for how it is
//! built without a public constructor). Lower level: [`register`] makes sure the factory is
//! registered (`Env::from_uri`-style lookups of `blobfs://...` then work), and
//! [`env_create`] builds a C API `rocksdb_env_t*` on BlobFS for `rocksdb_options_set_env`.

mod env;
pub mod ffi;
pub mod mount;
pub mod ops;
pub mod uri;

pub use env::env;
pub use mount::{Lease, Mount, OpenFile};
pub use ops::OpenMode;
/// The `rocksdb` crate this crate's [`env()`] is built for (`=0.20.1`): use it, or depend on
/// the same exact version.
pub use rocksdb;
pub use uri::Uri;

use std::ffi::{c_char, CStr, CString};
use std::fmt;

/// An error for RocksDB: an errno (ENOENT becomes NotFound, ENOSPC NoSpace, anything else
/// IOError) and a message naming the path or image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsError {
    pub code: i32,
    pub msg: String,
}

impl FsError {
    pub fn new(code: i32, msg: String) -> FsError {
        FsError { code, msg }
    }

    pub(crate) fn invalid(msg: String) -> FsError {
        FsError::new(libc::EINVAL, msg)
    }

    pub(crate) fn io(msg: String, e: &std::io::Error) -> FsError {
        FsError::new(e.raw_os_error().unwrap_or(libc::EIO), msg)
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for FsError {}

extern "C" {
    fn blobfs_rocksdb_register() -> i32;
    fn blobfs_rocksdb_env_create(
        uri: *const c_char,
        errbuf: *mut c_char,
        errlen: usize,
    ) -> *mut std::ffi::c_void;
}

/// Registers the `blobfs://` FileSystem factory with RocksDB's default object library.
/// The shim's static initializer already did; calling this also makes sure the linker
/// kept the shim. Idempotent.
pub fn register() {
    // SAFETY: the shim's registration takes no arguments and is idempotent (call_once).
    unsafe {
        blobfs_rocksdb_register();
    }
}

/// A new C API environment (`rocksdb_env_t*`, for `rocksdb_options_set_env`) whose file
/// system is BlobFS on `uri`; the caller owns it and frees it with `rocksdb_env_destroy`
/// (the `rocksdb` crate's `Env` does that on drop).
pub fn env_create(uri: &str) -> Result<*mut std::ffi::c_void, FsError> {
    let c = CString::new(uri).map_err(|_| FsError::invalid(format!("{uri:?}: contains NUL")))?;
    let mut buf = vec![0 as c_char; 1024];
    // SAFETY: `c` is a NUL-terminated string and `buf` a writable buffer of the given
    // length; both outlive the call, which does not keep them.
    let env = unsafe { blobfs_rocksdb_env_create(c.as_ptr(), buf.as_mut_ptr(), buf.len()) };
    if env.is_null() {
        // SAFETY: the shim NUL-terminates what it writes (snprintf), and the buffer was
        // zeroed, so it holds a C string within its length.
        let msg = unsafe { CStr::from_ptr(buf.as_ptr()) };
        return Err(FsError::new(libc::EIO, msg.to_string_lossy().into_owned()));
    }
    Ok(env)
}
