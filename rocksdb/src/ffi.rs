//! The C ABI the shim calls (declared in `shim/blobfs_ffi.h`; keep the two in step).
//!
//! Every function checks its pointers for null, turns a panic into an EIO error (nothing
//! unwinds into C++), and reports errors as an errno return value plus a message in the
//! caller's `BlobfsError`. A `BlobfsFs*` is a boxed [`Lease`], a `BlobfsFile*` a boxed
//! [`OpenFile`].

use crate::mount::{Lease, OpenFile};
use crate::ops::{self, OpenMode};
use crate::FsError;
use blobfs::Kind;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// `BlobfsError` in the header.
#[repr(C)]
#[derive(Debug)]
pub struct BlobfsError {
    pub code: i32,
    pub msg: [c_char; 512],
}

/// `BlobfsStat` in the header.
#[repr(C)]
#[derive(Debug, Default)]
pub struct BlobfsStat {
    pub kind: i32,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
}

pub const KIND_FILE: i32 = 1;
pub const KIND_DIR: i32 = 2;
pub const KIND_OTHER: i32 = 3;

pub const OPEN_READ: c_int = 0;
pub const OPEN_TRUNCATE: c_int = 1;
pub const OPEN_APPEND: c_int = 2;

/// The callback `blobfs_children` calls per name.
pub type ChildFn = unsafe extern "C" fn(ctx: *mut c_void, name: *const c_char, len: usize);

/// Runs `f`, turning a panic into an error.
fn guard<T>(f: impl FnOnce() -> Result<T, FsError>) -> Result<T, FsError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown".into());
            Err(FsError::new(
                libc::EIO,
                format!("blobfs: internal error (panic: {what})"),
            ))
        }
    }
}

/// Fills `err` (if given) from `e`.
fn fill(err: Option<&mut BlobfsError>, e: &FsError) {
    let Some(err) = err else { return };
    err.code = if e.code == 0 { libc::EIO } else { e.code };
    let bytes = e.msg.as_bytes();
    let n = bytes.len().min(err.msg.len() - 1);
    for (d, s) in err.msg.iter_mut().zip(&bytes[..n]) {
        *d = *s as c_char;
    }
    err.msg[n] = 0;
}

/// The errno to return for `r`, with `err` filled on failure.
fn report(err: Option<&mut BlobfsError>, r: Result<(), FsError>) -> c_int {
    match r {
        Ok(()) => {
            if let Some(err) = err {
                err.code = 0;
                err.msg[0] = 0;
            }
            0
        }
        Err(e) => {
            fill(err, &e);
            if e.code == 0 {
                libc::EIO
            } else {
                e.code
            }
        }
    }
}

fn null(what: &str) -> FsError {
    FsError::new(libc::EINVAL, format!("blobfs: null {what}"))
}

/// # Safety
/// `p` is null or a NUL-terminated string that stays valid and unchanged for `'a`.
unsafe fn bytes<'a>(p: *const c_char, what: &str) -> Result<&'a [u8], FsError> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: not null, and per this function's contract a valid C string for 'a.
    Ok(unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// # Safety
/// `fs` is null or a pointer returned by `blobfs_fs_open` and not yet closed.
unsafe fn lease<'a>(fs: *const Lease) -> Result<&'a Lease, FsError> {
    // SAFETY: per the contract, null or a live Box<Lease> allocation; only shared
    // references are made from it until blobfs_fs_close.
    unsafe { fs.as_ref() }.ok_or_else(|| null("filesystem"))
}

/// # Safety
/// `f` is null or a pointer returned by `blobfs_file_open` and not yet closed.
unsafe fn file<'a>(f: *const OpenFile) -> Result<&'a OpenFile, FsError> {
    // SAFETY: per the contract, null or a live Box<OpenFile>; shared references only.
    unsafe { f.as_ref() }.ok_or_else(|| null("file"))
}

/// # Safety
/// `err` is null or valid for writes and not aliased during the call.
unsafe fn err_mut<'a>(err: *mut BlobfsError) -> Option<&'a mut BlobfsError> {
    // SAFETY: per the contract.
    unsafe { err.as_mut() }
}

/// Opens the image of a `blobfs://` URI; null on failure.
///
/// # Safety
/// `uri` is a NUL-terminated string; `err` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_fs_open(uri: *const c_char, err: *mut BlobfsError) -> *mut Lease {
    // SAFETY: forwarded contract.
    let err = unsafe { err_mut(err) };
    let r = guard(|| {
        // SAFETY: forwarded contract.
        let uri = unsafe { bytes(uri, "URI") }?;
        let uri = std::str::from_utf8(uri)
            .map_err(|_| FsError::new(libc::EINVAL, "blobfs: the URI is not UTF-8".into()))?;
        Lease::open(uri)
    });
    match r {
        Ok(l) => Box::into_raw(Box::new(l)),
        Err(e) => {
            fill(err, &e);
            std::ptr::null_mut()
        }
    }
}

/// Drops a filesystem reference.
///
/// # Safety
/// `fs` is null or from `blobfs_fs_open`, not used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn blobfs_fs_close(fs: *mut Lease) {
    if fs.is_null() {
        return;
    }
    // SAFETY: per the contract, a Box<Lease> from blobfs_fs_open, given back once.
    let l = unsafe { Box::from_raw(fs) };
    let _ = guard(|| {
        drop(l);
        Ok(())
    });
}

/// The image path into `buf` (NUL-terminated, truncated); returns its full length.
///
/// # Safety
/// `fs` as for `blobfs_fs_close` but still open; `buf` is null or writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn blobfs_fs_image(fs: *const Lease, buf: *mut c_char, len: usize) -> usize {
    // SAFETY: forwarded contract.
    let Ok(l) = (unsafe { lease(fs) }) else {
        return 0;
    };
    let s = l.image().as_os_str().as_encoded_bytes();
    if !buf.is_null() && len > 0 {
        let n = s.len().min(len - 1);
        // SAFETY: buf is writable for len bytes per the contract, n < len, and the source
        // is a distinct Rust allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(s.as_ptr().cast::<c_char>(), buf, n);
            *buf.add(n) = 0;
        }
    }
    s.len()
}

/// Writes back and commits everything.
///
/// # Safety
/// `fs` is an open filesystem; `err` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_fs_sync(fs: *const Lease, err: *mut BlobfsError) -> c_int {
    // SAFETY: forwarded contract.
    let (fs, err) = unsafe { (lease(fs), err_mut(err)) };
    report(
        err,
        guard(|| {
            let l = fs?;
            l.fs()
                .sync_all()
                .map_err(|e| FsError::new(e.errno(), format!("{}: sync: {e}", l.image().display())))
        }),
    )
}

/// Bytes available.
///
/// # Safety
/// `fs` is an open filesystem; `out` writable; `err` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_fs_free_space(
    fs: *const Lease,
    out: *mut u64,
    err: *mut BlobfsError,
) -> c_int {
    // SAFETY: forwarded contract.
    let (fs, err) = unsafe { (lease(fs), err_mut(err)) };
    let r = guard(|| Ok(fs?.free_space()));
    match r {
        Ok(v) => {
            // SAFETY: `out` is writable per the contract (checked for null).
            if let Some(o) = unsafe { out.as_mut() } {
                *o = v;
            }
            report(err, Ok(()))
        }
        Err(e) => report(err, Err(e)),
    }
}

/// Attributes of a path.
///
/// # Safety
/// `fs` open; `path` a C string; `out` writable; `err` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_stat(
    fs: *const Lease,
    path: *const c_char,
    out: *mut BlobfsStat,
    err: *mut BlobfsError,
) -> c_int {
    // SAFETY: forwarded contract.
    let (fs, path, err) = unsafe { (lease(fs), bytes(path, "path"), err_mut(err)) };
    let r = guard(|| fs?.stat(path?));
    match r {
        Ok(a) => {
            // SAFETY: `out` is writable per the contract (checked for null).
            if let Some(o) = unsafe { out.as_mut() } {
                *o = BlobfsStat {
                    kind: match a.kind {
                        Kind::File => KIND_FILE,
                        Kind::Dir => KIND_DIR,
                        _ => KIND_OTHER,
                    },
                    size: a.size,
                    mtime_sec: a.mtime.sec,
                    mtime_nsec: a.mtime.nsec,
                };
            }
            report(err, Ok(()))
        }
        Err(e) => report(err, Err(e)),
    }
}

/// Calls `cb` for every name in a directory.
///
/// # Safety
/// `fs` open; `path` a C string; `cb` callable with `ctx`; `err` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_children(
    fs: *const Lease,
    path: *const c_char,
    cb: Option<ChildFn>,
    ctx: *mut c_void,
    err: *mut BlobfsError,
) -> c_int {
    // SAFETY: forwarded contract.
    let (fs, path, err) = unsafe { (lease(fs), bytes(path, "path"), err_mut(err)) };
    let r = guard(|| {
        let cb = cb.ok_or_else(|| null("callback"))?;
        let names = fs?.children(path?)?;
        for n in names {
            // SAFETY: the caller's callback with its own context; the name is valid for
            // the call (the callback copies it).
            unsafe { cb(ctx, n.as_ptr().cast::<c_char>(), n.len()) };
        }
        Ok(())
    });
    report(err, r)
}

/// Creates a directory (`parents`: mkdir -p).
///
/// # Safety
/// `fs` open; `path` a C string; `err` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_mkdir(
    fs: *const Lease,
    path: *const c_char,
    parents: c_int,
    err: *mut BlobfsError,
) -> c_int {
    // SAFETY: forwarded contract.
    let (fs, path, err) = unsafe { (lease(fs), bytes(path, "path"), err_mut(err)) };
    report(err, guard(|| fs?.mkdir(path?, parents != 0)))
}

/// Removes an empty directory.
///
/// # Safety
/// `fs` open; `path` a C string; `err` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_rmdir(
    fs: *const Lease,
    path: *const c_char,
    err: *mut BlobfsError,
) -> c_int {
    // SAFETY: forwarded contract.
    let (fs, path, err) = unsafe { (lease(fs), bytes(path, "path"), err_mut(err)) };
    report(err, guard(|| fs?.rmdir(path?)))
}

/// Removes a file.
///
/// # Safety
/// `fs` open; `path` a C string; `err` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_unlink(
    fs: *const Lease,
    path: *const c_char,
    err: *mut BlobfsError,
) -> c_int {
    // SAFETY: forwarded contract.
    let (fs, path, err) = unsafe { (lease(fs), bytes(path, "path"), err_mut(err)) };
    report(err, guard(|| fs?.unlink(path?)))
}

/// Renames, replacing the target atomically.
///
/// # Safety
/// `fs` open; `from` and `to` C strings; `err` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_rename(
    fs: *const Lease,
    from: *const c_char,
    to: *const c_char,
    err: *mut BlobfsError,
) -> c_int {
    // SAFETY: forwarded contract.
    let (fs, from, to, err) = unsafe {
        (
            lease(fs),
            bytes(from, "path"),
            bytes(to, "path"),
            err_mut(err),
        )
    };
    report(err, guard(|| fs?.rename(from?, to?)))
}

/// Commits every change so far.
///
/// # Safety
/// `fs` open; `path` a C string; `err` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_sync_dir(
    fs: *const Lease,
    path: *const c_char,
    err: *mut BlobfsError,
) -> c_int {
    // SAFETY: forwarded contract.
    let (fs, path, err) = unsafe { (lease(fs), bytes(path, "path"), err_mut(err)) };
    report(err, guard(|| fs?.sync_dir(path?)))
}

/// Takes the in-process lock on a path.
///
/// # Safety
/// `fs` open; `path` a C string; `err` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_lock(
    fs: *const Lease,
    path: *const c_char,
    err: *mut BlobfsError,
) -> c_int {
    // SAFETY: forwarded contract.
    let (fs, path, err) = unsafe { (lease(fs), bytes(path, "path"), err_mut(err)) };
    report(
        err,
        guard(|| {
            let l = fs?;
            l.lock(l, path?)
        }),
    )
}

/// Releases a lock.
///
/// # Safety
/// `fs` open; `path` a C string; `err` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_unlock(
    fs: *const Lease,
    path: *const c_char,
    err: *mut BlobfsError,
) -> c_int {
    // SAFETY: forwarded contract.
    let (fs, path, err) = unsafe { (lease(fs), bytes(path, "path"), err_mut(err)) };
    report(err, guard(|| fs?.unlock(path?)))
}

/// Opens a file.
///
/// # Safety
/// `fs` open; `path` a C string; `out` and `size` writable; `err` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_file_open(
    fs: *const Lease,
    path: *const c_char,
    mode: c_int,
    out: *mut *mut OpenFile,
    size: *mut u64,
    err: *mut BlobfsError,
) -> c_int {
    // SAFETY: forwarded contract.
    let (fs, path, err) = unsafe { (lease(fs), bytes(path, "path"), err_mut(err)) };
    if out.is_null() {
        return report(err, Err(null("file out-pointer")));
    }
    let r = guard(|| {
        let mode = match mode {
            OPEN_READ => OpenMode::Read,
            OPEN_TRUNCATE => OpenMode::Truncate,
            OPEN_APPEND => OpenMode::Append,
            m => return Err(FsError::new(libc::EINVAL, format!("blobfs: open mode {m}"))),
        };
        let f = ops::open(fs?, path?, mode)?;
        let sz = f.size()?;
        Ok((f, sz))
    });
    match r {
        Ok((f, sz)) => {
            // SAFETY: `out` is writable (checked for null) and `size` null or writable,
            // per the contract.
            unsafe {
                *out = Box::into_raw(Box::new(f));
                if let Some(s) = size.as_mut() {
                    *s = sz;
                }
            }
            report(err, Ok(()))
        }
        Err(e) => {
            // SAFETY: as above.
            unsafe { *out = std::ptr::null_mut() };
            report(err, Err(e))
        }
    }
}

/// Reads at an offset.
///
/// # Safety
/// `f` open; `buf` writable for `len` bytes; `got` writable; `err` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_file_read(
    f: *const OpenFile,
    offset: u64,
    buf: *mut u8,
    len: usize,
    got: *mut usize,
    err: *mut BlobfsError,
) -> c_int {
    // SAFETY: forwarded contract.
    let (f, err) = unsafe { (file(f), err_mut(err)) };
    if len > 0 && buf.is_null() {
        return report(err, Err(null("buffer")));
    }
    let r = guard(|| {
        let out: &mut [u8] = if len == 0 {
            &mut []
        } else {
            // SAFETY: buf is not null and writable for len bytes per the contract; RocksDB
            // hands each reader its own scratch buffer, so nothing else uses it meanwhile.
            unsafe { std::slice::from_raw_parts_mut(buf, len) }
        };
        f?.read_at(offset, out)
    });
    match r {
        Ok(n) => {
            // SAFETY: null or writable per the contract.
            if let Some(g) = unsafe { got.as_mut() } {
                *g = n;
            }
            report(err, Ok(()))
        }
        Err(e) => report(err, Err(e)),
    }
}

/// Writes at an offset.
///
/// # Safety
/// `f` open; `data` readable for `len` bytes; `err` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_file_write(
    f: *const OpenFile,
    offset: u64,
    data: *const u8,
    len: usize,
    err: *mut BlobfsError,
) -> c_int {
    // SAFETY: forwarded contract.
    let (f, err) = unsafe { (file(f), err_mut(err)) };
    if len > 0 && data.is_null() {
        return report(err, Err(null("data")));
    }
    let r = guard(|| {
        let data: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: not null and readable for len bytes per the contract, unchanged
            // during the call.
            unsafe { std::slice::from_raw_parts(data, len) }
        };
        f?.write_at(offset, data)
    });
    report(err, r)
}

/// Sets a file's size.
///
/// # Safety
/// `f` open; `err` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_file_truncate(
    f: *const OpenFile,
    size: u64,
    err: *mut BlobfsError,
) -> c_int {
    // SAFETY: forwarded contract.
    let (f, err) = unsafe { (file(f), err_mut(err)) };
    report(err, guard(|| f?.truncate(size)))
}

/// Writes cached data back.
///
/// # Safety
/// `f` open; `err` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_file_flush(f: *const OpenFile, err: *mut BlobfsError) -> c_int {
    // SAFETY: forwarded contract.
    let (f, err) = unsafe { (file(f), err_mut(err)) };
    report(err, guard(|| f?.flush()))
}

/// Makes the file durable.
///
/// # Safety
/// `f` open; `err` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_file_fsync(f: *const OpenFile, err: *mut BlobfsError) -> c_int {
    // SAFETY: forwarded contract.
    let (f, err) = unsafe { (file(f), err_mut(err)) };
    report(err, guard(|| f?.fsync()))
}

/// The file's size.
///
/// # Safety
/// `f` open; `size` writable; `err` null or writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_file_size(
    f: *const OpenFile,
    size: *mut u64,
    err: *mut BlobfsError,
) -> c_int {
    // SAFETY: forwarded contract.
    let (f, err) = unsafe { (file(f), err_mut(err)) };
    match guard(|| f?.size()) {
        Ok(v) => {
            // SAFETY: null or writable per the contract.
            if let Some(s) = unsafe { size.as_mut() } {
                *s = v;
            }
            report(err, Ok(()))
        }
        Err(e) => report(err, Err(e)),
    }
}

/// The inode number (0 for null).
///
/// # Safety
/// `f` is null or open.
#[no_mangle]
pub unsafe extern "C" fn blobfs_file_ino(f: *const OpenFile) -> u64 {
    // SAFETY: forwarded contract.
    unsafe { file(f) }.map_or(0, |f| f.ino())
}

/// Closes and frees a file handle.
///
/// # Safety
/// `f` is null or from `blobfs_file_open`, not used again afterwards; `err` null or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn blobfs_file_close(f: *mut OpenFile, err: *mut BlobfsError) -> c_int {
    // SAFETY: forwarded contract.
    let err = unsafe { err_mut(err) };
    if f.is_null() {
        return report(err, Ok(()));
    }
    // SAFETY: a Box<OpenFile> from blobfs_file_open, given back once per the contract.
    let f = unsafe { Box::from_raw(f) };
    report(err, guard(|| f.close()))
}
