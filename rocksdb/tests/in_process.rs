//! RocksDB on BlobFS inside this process: the C API (librocksdb's own `rocksdb_open`,
//! `rocksdb_put`...) with the environment from `blobfs_rocksdb::env_create`, the way the
//! Rust `rocksdb` crate will use it; and the path operations under the C ABI.

mod common;

use blobfs_rocksdb::{Lease, OpenMode};
use common::*;
use std::ffi::{c_char, c_void, CStr, CString};

#[allow(non_camel_case_types)]
type rocksdb_t = c_void;
#[allow(non_camel_case_types)]
type opts_t = c_void;

extern "C" {
    fn rocksdb_options_create() -> *mut opts_t;
    fn rocksdb_options_destroy(o: *mut opts_t);
    fn rocksdb_options_set_create_if_missing(o: *mut opts_t, v: u8);
    fn rocksdb_options_set_env(o: *mut opts_t, env: *mut c_void);
    fn rocksdb_options_set_write_buffer_size(o: *mut opts_t, v: usize);
    fn rocksdb_open(o: *const opts_t, name: *const c_char, err: *mut *mut c_char)
        -> *mut rocksdb_t;
    fn rocksdb_close(db: *mut rocksdb_t);
    fn rocksdb_writeoptions_create() -> *mut c_void;
    fn rocksdb_writeoptions_destroy(w: *mut c_void);
    fn rocksdb_writeoptions_set_sync(w: *mut c_void, v: u8);
    fn rocksdb_readoptions_create() -> *mut c_void;
    fn rocksdb_readoptions_destroy(r: *mut c_void);
    fn rocksdb_flushoptions_create() -> *mut c_void;
    fn rocksdb_flushoptions_destroy(f: *mut c_void);
    fn rocksdb_put(
        db: *mut rocksdb_t,
        w: *const c_void,
        k: *const c_char,
        kl: usize,
        v: *const c_char,
        vl: usize,
        err: *mut *mut c_char,
    );
    fn rocksdb_get(
        db: *mut rocksdb_t,
        r: *const c_void,
        k: *const c_char,
        kl: usize,
        vl: *mut usize,
        err: *mut *mut c_char,
    ) -> *mut c_char;
    fn rocksdb_flush(db: *mut rocksdb_t, f: *const c_void, err: *mut *mut c_char);
    fn rocksdb_free(p: *mut c_void);
    fn rocksdb_env_destroy(env: *mut c_void);
}

/// Takes and frees a C API error string.
fn take_err(err: *mut c_char) -> Option<String> {
    if err.is_null() {
        return None;
    }
    // SAFETY: RocksDB's C API returns errors as malloc'ed C strings owned by the caller.
    let s = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: the string came from RocksDB's allocator; rocksdb_free releases it.
    unsafe { rocksdb_free(err.cast()) };
    Some(s)
}

/// A DB opened through the C API on a BlobFS environment.
struct Db {
    db: *mut rocksdb_t,
    opts: *mut opts_t,
}

impl Db {
    fn open(env: *mut c_void, path: &str) -> Result<Db, String> {
        let name = CString::new(path).expect("path");
        // SAFETY: plain C API calls with valid arguments: fresh options, the caller's live
        // environment, a NUL-terminated name and an error out-pointer.
        unsafe {
            let opts = rocksdb_options_create();
            rocksdb_options_set_create_if_missing(opts, 1);
            rocksdb_options_set_env(opts, env);
            rocksdb_options_set_write_buffer_size(opts, 128 << 10);
            let mut err = std::ptr::null_mut();
            let db = rocksdb_open(opts, name.as_ptr(), &mut err);
            if let Some(e) = take_err(err) {
                rocksdb_options_destroy(opts);
                return Err(e);
            }
            assert!(!db.is_null());
            Ok(Db { db, opts })
        }
    }

    fn put(&self, k: &[u8], v: &[u8], sync: bool) {
        // SAFETY: the DB is open; key and value are valid for their lengths; the write
        // options are created and destroyed here.
        let err = unsafe {
            let w = rocksdb_writeoptions_create();
            rocksdb_writeoptions_set_sync(w, u8::from(sync));
            let mut err = std::ptr::null_mut();
            rocksdb_put(
                self.db,
                w,
                k.as_ptr().cast(),
                k.len(),
                v.as_ptr().cast(),
                v.len(),
                &mut err,
            );
            rocksdb_writeoptions_destroy(w);
            err
        };
        if let Some(e) = take_err(err) {
            panic!("put: {e}");
        }
    }

    fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
        let mut len = 0usize;
        // SAFETY: the DB is open; the key is valid for its length; len and err are
        // out-pointers to locals.
        let (v, err) = unsafe {
            let r = rocksdb_readoptions_create();
            let mut err = std::ptr::null_mut();
            let v = rocksdb_get(self.db, r, k.as_ptr().cast(), k.len(), &mut len, &mut err);
            rocksdb_readoptions_destroy(r);
            (v, err)
        };
        if let Some(e) = take_err(err) {
            panic!("get: {e}");
        }
        if v.is_null() {
            return None;
        }
        // SAFETY: RocksDB returned a malloc'ed value of `len` bytes, owned by us.
        let out = unsafe { std::slice::from_raw_parts(v.cast::<u8>(), len) }.to_vec();
        // SAFETY: as above; freed once.
        unsafe { rocksdb_free(v.cast()) };
        Some(out)
    }

    fn flush(&self) {
        // SAFETY: the DB is open; the flush options are created and destroyed here.
        let err = unsafe {
            let f = rocksdb_flushoptions_create();
            let mut err = std::ptr::null_mut();
            rocksdb_flush(self.db, f, &mut err);
            rocksdb_flushoptions_destroy(f);
            err
        };
        if let Some(e) = take_err(err) {
            panic!("flush: {e}");
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // SAFETY: both were created by Db::open and are released once.
        unsafe {
            rocksdb_close(self.db);
            rocksdb_options_destroy(self.opts);
        }
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("key{i:06}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    format!("value-{i}-").repeat(20).into_bytes()
}

#[test]
fn c_api_db_on_blobfs_with_a_real_lock() {
    let fx = Fixture::new();
    let env = blobfs_rocksdb::env_create(&fx.uri()).expect("env on the image");
    {
        let db = Db::open(env, "/db").expect("open");
        for i in 0..5000 {
            db.put(&key(i), &value(i), i % 1000 == 999);
        }
        db.flush();
        // A second open of the same DB in this process hits the LOCK.
        let e = Db::open(env, "/db").err().expect("second open must fail");
        assert!(e.contains("lock hold by current process"), "{e}");
        eprintln!("second open of /db in this process: {e}");
        // Another DB in the same image is fine.
        let other = Db::open(env, "/other/db").expect("a second DB in the image");
        other.put(b"k", b"v", true);
        assert_eq!(other.get(b"k").as_deref(), Some(&b"v"[..]));
    }
    {
        // Closed and reopened: the lock is free again, everything is there (WAL replay
        // for what was not flushed).
        let db = Db::open(env, "/db").expect("reopen");
        for i in (0..5000).step_by(7) {
            assert_eq!(db.get(&key(i)), Some(value(i)), "key {i}");
        }
        assert_eq!(db.get(b"nope"), None);
        for i in 5000..6000 {
            db.put(&key(i), &value(i), false);
        }
    }
    // SAFETY: the environment from env_create, with no DB using it any more; freed once.
    unsafe { rocksdb_env_destroy(env) };
    // The last user closed the image (flock released): the CLI can check it.
    fx.assert_fsck_clean();
    let names = fx.ls("/db");
    assert!(names.iter().any(|n| n.ends_with(".sst")), "{names:?}");

    // A fresh process-level open sees the unsynced tail too (written back at close).
    let env = blobfs_rocksdb::env_create(&fx.uri()).expect("env again");
    {
        let db = Db::open(env, "/db").expect("reopen after close");
        assert_eq!(db.get(&key(5999)), Some(value(5999)));
    }
    // SAFETY: as above.
    unsafe { rocksdb_env_destroy(env) };
    fx.assert_fsck_clean();
}

#[test]
fn env_create_reports_bad_uris() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.img");
    let e = blobfs_rocksdb::env_create(&format!("blobfs://{}", missing.display()))
        .expect_err("missing image");
    assert!(e.msg.contains(&missing.display().to_string()), "{e}");
    assert!(e.msg.contains("no such image file"), "{e}");
    let e = blobfs_rocksdb::env_create("file:///x").expect_err("bad scheme");
    assert!(e.msg.contains("not a BlobFS URI"), "{e}");
}

#[test]
fn path_operations() {
    let fx = Fixture::new();
    let lease = Lease::open(&fx.uri()).expect("open");
    // The same image twice in one process: one mount, shared.
    let again = Lease::open(&format!(
        "blobfs://{}/./{}",
        fx.dir.path().display(),
        fx.image.file_name().unwrap().to_string_lossy()
    ))
    .expect("second lease");
    // (Other tests of this binary may have images open too.)
    let canonical = std::fs::canonicalize(&fx.image).expect("canonical");
    let is_open = || blobfs_rocksdb::mount::open_images().contains(&canonical);
    assert!(is_open());
    drop(again);
    assert!(is_open());

    lease.mkdir(b"/a/b/c", true).expect("mkdir -p");
    lease.mkdir(b"/a/b/c", true).expect("mkdir -p again");
    assert_eq!(lease.mkdir(b"/a/b", false).unwrap_err().code, libc::EEXIST);
    assert_eq!(lease.mkdir(b"/x/y", false).unwrap_err().code, libc::ENOENT);

    // Write, reopen for append, truncate, read.
    let f = blobfs_rocksdb::ops::open(&lease, b"a/b/f", OpenMode::Truncate).expect("create");
    f.write_at(0, b"hello ").expect("write");
    f.close().expect("close");
    let f = blobfs_rocksdb::ops::open(&lease, b"/a/b/f", OpenMode::Append).expect("append");
    let size = f.size().expect("size");
    assert_eq!(size, 6);
    f.write_at(size, b"world").expect("append");
    f.fsync().expect("fsync");
    let mut buf = vec![0u8; 100];
    let n = f.read_at(0, &mut buf).expect("read");
    assert_eq!(&buf[..n], b"hello world");
    f.truncate(5).expect("truncate");
    let n = f.read_at(0, &mut buf).expect("read");
    assert_eq!(&buf[..n], b"hello");
    f.close().expect("close");
    // Truncate mode empties an existing file.
    let f = blobfs_rocksdb::ops::open(&lease, b"/a/b/f", OpenMode::Truncate).expect("truncate");
    assert_eq!(f.size().expect("size"), 0);
    f.write_at(0, b"new").expect("write");
    drop(f);
    assert_eq!(
        blobfs_rocksdb::ops::open(&lease, b"/a/b/missing", OpenMode::Read)
            .unwrap_err()
            .code,
        libc::ENOENT
    );
    assert_eq!(
        blobfs_rocksdb::ops::open(&lease, b"/a/b", OpenMode::Read)
            .unwrap_err()
            .code,
        libc::EISDIR
    );

    // Rename replaces atomically (RocksDB's CURRENT).
    let t = blobfs_rocksdb::ops::open(&lease, b"/a/tmp", OpenMode::Truncate).expect("tmp");
    t.write_at(0, b"MANIFEST-000009\n").expect("write");
    t.close().expect("close");
    lease.rename(b"/a/tmp", b"/a/b/f").expect("rename over");
    assert_eq!(lease.stat(b"/a/b/f").expect("stat").size, 16);
    assert_eq!(lease.stat(b"/a/tmp").unwrap_err().code, libc::ENOENT);

    let mut names = lease.children(b"/a/b").expect("children");
    names.sort();
    assert_eq!(names, vec![b"c".to_vec(), b"f".to_vec()]);

    // Locks: the file is created; a second lock fails; unlock frees it.
    lease.lock(&lease, b"/a/LOCK").expect("lock");
    let e = lease.lock(&lease, b"/a//LOCK").unwrap_err();
    assert!(e.msg.contains("lock hold by current process"), "{e}");
    assert!(lease.stat(b"/a/LOCK").is_ok());
    lease.unlock(b"/a/LOCK").expect("unlock");
    lease.lock(&lease, b"/a/LOCK").expect("lock again");
    lease.unlock(b"/a/LOCK").expect("unlock");

    assert_eq!(lease.rmdir(b"/a/b").unwrap_err().code, libc::ENOTEMPTY);
    lease.unlink(b"/a/b/f").expect("unlink");
    lease.rmdir(b"/a/b/c").expect("rmdir");
    lease.rmdir(b"/a/b").expect("rmdir");
    lease.sync_dir(b"/a").expect("sync");
    assert!(lease.free_space() > 0);
    drop(lease);
    assert!(!is_open());
    fx.assert_fsck_clean();
    assert_eq!(fx.ls("/a"), vec!["LOCK".to_string()]);
}

/// Set in the child process of `unsynced_writes_survive_a_clean_exit`: the image URI.
const CHILD_ENV: &str = "BLOBFS_ROCKSDB_TEST_CHILD_URI";

#[test]
fn unsynced_writes_survive_a_clean_exit() {
    if let Ok(uri) = std::env::var(CHILD_ENV) {
        // The child: write without any sync and exit without closing the DB or the
        // environment (as db_bench does). With sync_interval=0 only the exit handler can
        // commit what was written.
        let env = blobfs_rocksdb::env_create(&uri).expect("env");
        let db = Db::open(env, "/db").expect("open");
        for i in 0..1000 {
            db.put(&key(i), &value(i), false);
        }
        std::mem::forget(db);
        std::process::exit(0);
    }
    require_tools();
    let fx = Fixture::new();
    let uri = format!("{}?sync_interval=0", fx.uri());
    let st = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "unsynced_writes_survive_a_clean_exit",
            "--nocapture",
        ])
        .env(CHILD_ENV, &uri)
        .status()
        .expect("run the child");
    assert!(st.success(), "child: {st:?}");
    let o = tool(
        "ldb",
        &[
            format!("--fs_uri={}", fx.uri()),
            "--db=/db".into(),
            "scan".into(),
        ],
        fx.dir.path(),
    );
    assert!(o.status.success(), "{}", show("ldb scan", &o));
    assert_eq!(
        text(&o.stdout).lines().count(),
        1000,
        "{}",
        show("ldb scan", &o)
    );
    fx.assert_fsck_clean();
}
