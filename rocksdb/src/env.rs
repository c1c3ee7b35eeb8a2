//! The `rocksdb` crate's [`rocksdb::Env`] on BlobFS, for Rust programs:
//!
//! ```no_run
//! let mut opts = rocksdb::Options::default();
//! opts.create_if_missing(true);
//! opts.set_env(&blobfs_rocksdb::env("blobfs:///tmp/db.img")?);
//! let db = rocksdb::DB::open(&opts, "/tmp/mydb")?; // a path inside the image
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The environment itself is made on the C++ side ([`crate::env_create`]: a C API
//! `rocksdb_env_t*` holding `NewCompositeEnv` on our FileSystem). rocksdb 0.20.1 has no
//! public way to wrap a foreign `rocksdb_env_t*` in its `Env` (its constructors only make the
//! default and the in-memory environment; `Options::set_env` is the only way to hand an
//! environment to a DB, and no options-string or raw-pointer path exists in that version),
//! and a patched copy of the crate cannot be shipped. So [`env`] builds the crate's `Env`
//! from a value of the same layout, relying on the exact pinned version (`=0.20.1` in the
//! workspace `Cargo.toml`); what that relies on, and how it is checked, is below.

use crate::FsError;
use std::ffi::c_void;
use std::mem::{align_of, size_of};
use std::sync::Arc;

/// Mirrors rocksdb 0.20.1's private environment holder, `src/env.rs`:
///
/// ```text
/// #[derive(Clone)]
/// pub struct Env(pub(crate) Arc<EnvWrapper>);
/// pub(crate) struct EnvWrapper { pub(crate) inner: *mut ffi::rocksdb_env_t }
/// impl Drop for EnvWrapper { fn drop(&mut self) { ffi::rocksdb_env_destroy(self.inner) } }
/// ```
///
/// One thin raw pointer, nothing else. No `Drop` here: once the value is the crate's `Env`,
/// its `EnvWrapper::drop` frees the environment, exactly once, when the last clone (the
/// caller's, and those every `Options`/`DB` it was given to keep) goes away.
struct Mirror {
    inner: *mut c_void,
}

// SAFETY: as the crate's own `unsafe impl Send/Sync for EnvWrapper` (rocksdb 0.20.1
// src/env.rs), which this mirrors: the pointer is a RocksDB environment, which is safe to
// use from any thread without external synchronization (rocksdb/env.h), and ours is
// `NewCompositeEnv` over a thread-safe FileSystem (every C ABI call below it is too).
unsafe impl Send for Mirror {}
// SAFETY: see `Send` above.
unsafe impl Sync for Mirror {}

// The crate's `Env` is one `Arc` of a one-pointer struct; so is `Arc<Mirror>`.
const _: () = assert!(size_of::<rocksdb::Env>() == size_of::<Arc<Mirror>>());
const _: () = assert!(align_of::<rocksdb::Env>() == align_of::<Arc<Mirror>>());
const _: () = assert!(size_of::<Mirror>() == size_of::<*mut c_void>());

/// A `rocksdb` crate environment whose file system is BlobFS on `uri`
/// (`blobfs://IMAGE[?sync_interval=SECS]`): give it to [`rocksdb::Options::set_env`]; DB
/// paths are then absolute paths inside the image. The image stays open (an exclusive
/// flock: no other process can use it meanwhile) until the last clone of the environment
/// and every DB opened with it are gone; it is then written back, committed and closed.
///
/// The crate's `DB::open*` runs `std::fs::create_dir_all(path)` on the host before RocksDB
/// sees the path, so a DB path must also be one the process may create on the host (it
/// stays an empty directory there; nothing is written in it).
///
/// Only synced writes (`WriteOptions::set_sync(true)`, `DB::flush_wal(true)`, flushes) are
/// durable at once; the rest live in BlobFS's cache in this process until the periodic
/// sync (`?sync_interval=SECS`, default 5 s) or the close, so a kill -9 may lose them.
pub fn env(uri: &str) -> Result<rocksdb::Env, FsError> {
    let raw = crate::env_create(uri)?;
    let mirror = Arc::new(Mirror { inner: raw });
    let probe = Arc::downgrade(&mirror);
    // SAFETY: relies on the layout of rocksdb =0.20.1 (pinned exactly; a different version
    // fails to resolve rather than build on a guess):
    // - `rocksdb::Env` is a single-field tuple struct around `Arc<EnvWrapper>`, so it is laid
    //   out as that `Arc` (the size and alignment assertions above hold);
    // - `EnvWrapper` is a single-field struct around `*mut ffi::rocksdb_env_t`, laid out as
    //   that pointer, the same as `Mirror` around `*mut c_void`, so `Arc`'s heap block
    //   (`ArcInner<T>`: `#[repr(C)]` counts, then `T`) has the same layout for both, and
    //   the crate's `Arc<EnvWrapper>` deallocates with the same layout we allocated with;
    // - `raw` is what `EnvWrapper::inner` must be: a `rocksdb_env_t*` allocated with `new`
    //   by the shim with the C API's own struct definition (`is_default` false), that
    //   `rocksdb_env_destroy` frees (deleting our `Env`, which releases the FileSystem and
    //   with it the image's lease). Nobody else owns it: `env_create` handed it to us and
    //   it goes nowhere but here, so it is freed once, by the crate, on the last drop.
    // `Mirror` has no `Drop`, so nothing is freed twice; `Send`/`Sync` of the crate's
    // `EnvWrapper` hold for our environment (RocksDB environments are thread-safe).
    let env: rocksdb::Env = unsafe { std::mem::transmute::<Arc<Mirror>, rocksdb::Env>(mirror) };
    self_check(env, &probe, raw)
}

/// Checks, without side effects, that the crate's `Env` really is our `Arc`: cloning it
/// must raise the strong count we can see through our weak reference, and the value in it
/// must be our pointer. (That RocksDB then uses BlobFS through it is what the tests show:
/// the DB files land in the image, not on the host, and dropping the last clone closes the
/// image.) On a mismatch the value is leaked rather than dropped, and we panic.
fn self_check(
    env: rocksdb::Env,
    probe: &std::sync::Weak<Mirror>,
    raw: *mut c_void,
) -> Result<rocksdb::Env, FsError> {
    let before = probe.strong_count();
    let copy = env.clone();
    let with_copy = probe.strong_count();
    drop(copy);
    let inner = probe.upgrade().map(|m| m.inner);
    let after = probe.strong_count();
    if before == 1 && with_copy == 2 && after == 1 && inner == Some(raw) {
        return Ok(env);
    }
    std::mem::forget(env);
    panic!(
        "blobfs_rocksdb::env: the rocksdb crate's Env does not have the layout this crate \
         was written for (rocksdb =0.20.1): strong counts {before}/{with_copy}/{after}"
    );
}
