//! RocksDB on BlobFS through the `rocksdb` crate's API (`blobfs_rocksdb::env`): many writes
//! over several column families with flushes and compactions, reopen and read back,
//! iterators, snapshots, the DB lock; then the closed image checked with fsck, read with
//! the stock `ldb` (LD_PRELOAD) and mounted with FUSE.

mod common;

use blobfs_rocksdb::rocksdb::{
    self, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use common::*;
use std::sync::Arc;
use std::time::Instant;

/// Column families of the big test; keys are spread over them round-robin.
const CFS: [&str; 4] = ["default", "cf1", "cf2", "cf3"];
const KEYS: usize = 200_000;
const BATCH: usize = 1000;

fn key(i: usize) -> Vec<u8> {
    format!("key{i:08}").into_bytes()
}

/// The column family of key `i`.
fn cf_of(i: usize) -> usize {
    i % CFS.len()
}

/// splitmix64: a deterministic stream for value lengths and bytes.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The value of key `i` in generation `generation`: 100–1000 bytes, a readable header then
/// pseudo-random bytes (barely compressible, so the SST files carry real data).
fn value(i: usize, generation: u64) -> Vec<u8> {
    let seed = mix(i as u64 ^ (generation << 40));
    let len = 100 + (seed % 901) as usize;
    let mut v = format!("k{i}g{generation}|").into_bytes();
    let mut x = seed;
    while v.len() < len {
        x = mix(x);
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Options of the big test: small memtables and files, so there are many flushes and
/// compactions across levels.
fn small_buffer_options() -> Options {
    let mut o = Options::default();
    o.set_write_buffer_size(512 << 10);
    o.set_max_write_buffer_number(3);
    o.set_target_file_size_base(1 << 20);
    o.set_max_bytes_for_level_base(4 << 20);
    o.set_level_zero_file_num_compaction_trigger(4);
    o
}

fn open_big(env: &rocksdb::Env, path: &str, create: bool) -> DB {
    let mut opts = small_buffer_options();
    opts.create_if_missing(create);
    opts.create_missing_column_families(create);
    opts.set_max_background_jobs(2);
    opts.set_paranoid_checks(true);
    opts.set_env(env);
    let cfs = CFS
        .iter()
        .map(|n| ColumnFamilyDescriptor::new(*n, small_buffer_options()));
    DB::open_cf_descriptors(&opts, path, cfs).expect("open the DB on BlobFS")
}

fn handles(db: &DB) -> Vec<&rocksdb::ColumnFamily> {
    CFS.iter()
        .map(|n| db.cf_handle(n).expect("column family"))
        .collect()
}

/// The key generation: the first 2,000 keys are overwritten once (generation 1).
fn generation(i: usize) -> u64 {
    u64::from(i < 2000)
}

#[test]
fn two_hundred_thousand_writes_over_four_column_families() {
    let started = Instant::now();
    let fx = Fixture::with_size("2G");
    let uri = fx.uri();
    let path = fx.db_path("db");

    // Write: 200 batches of 1,000 puts, round-robin over the column families; every 20th
    // batch synced. Then overwrite the first 2,000 keys.
    let env = blobfs_rocksdb::env(&uri).expect("env on the image");
    let db = open_big(&env, &path, true);
    let cfs = handles(&db);
    let mut bytes = 0usize;
    for b in 0..KEYS / BATCH {
        let mut batch = WriteBatch::default();
        for i in b * BATCH..(b + 1) * BATCH {
            let v = value(i, 0);
            bytes += v.len();
            batch.put_cf(cfs[cf_of(i)], key(i), v);
        }
        let mut w = WriteOptions::default();
        w.set_sync(b % 20 == 19);
        db.write_opt(batch, &w).expect("write batch");
    }
    let mut batch = WriteBatch::default();
    for i in 0..2000 {
        batch.put_cf(cfs[cf_of(i)], key(i), value(i, 1));
    }
    db.write(batch).expect("overwrite batch");
    let wrote = started.elapsed();

    // Explicit flush and full compaction of every column family.
    for cf in &cfs {
        db.flush_cf(*cf).expect("flush");
        db.compact_range_cf(*cf, None::<&[u8]>, None::<&[u8]>);
    }
    let files = db.live_files().expect("live files");
    let deepest = files.iter().map(|f| f.level).max().unwrap_or(0);
    let ssts = files.len();
    assert!(deepest >= 1, "no compaction output below L0: {ssts} files");
    for (n, cf) in CFS.iter().zip(&cfs) {
        let keys = db
            .property_int_value_cf(*cf, "rocksdb.estimate-num-keys")
            .expect("property")
            .unwrap_or(0);
        assert!(keys > 0, "{n}: no keys");
    }
    let compactions = db
        .property_value("rocksdb.stats")
        .expect("stats")
        .unwrap_or_default();
    drop(cfs);
    drop(db);
    drop(env);
    eprintln!(
        "wrote {KEYS} keys ({} MiB of values) in {:.1?}; flushed and compacted: {ssts} live \
         SST files, deepest level L{deepest}",
        bytes >> 20,
        wrote
    );
    let compaction_lines = compactions
        .lines()
        .filter(|l| l.trim_start().starts_with("Sum"))
        .count();
    assert!(compaction_lines > 0, "no compaction stats:\n{compactions}");

    // Reopen (a new environment: the image was closed) and read everything back.
    let t = Instant::now();
    let env = blobfs_rocksdb::env(&uri).expect("env again");
    let db = open_big(&env, &path, false);
    let cfs = handles(&db);
    for i in 0..KEYS {
        let got = db.get_pinned_cf(cfs[cf_of(i)], key(i)).expect("get");
        let want = value(i, generation(i));
        assert!(
            got.as_deref() == Some(&want[..]),
            "key {i}: {:?}",
            got.map(|g| g.len())
        );
        // Not in the other column families.
        let other = cfs[(cf_of(i) + 1) % CFS.len()];
        if i % 97 == 0 {
            assert_eq!(
                db.get_pinned_cf(other, key(i)).expect("get").as_deref(),
                None
            );
        }
    }
    // A full scan of each column family: exactly its keys, in order.
    for (c, cf) in cfs.iter().enumerate() {
        let mut n = 0;
        for (j, item) in db.iterator_cf(*cf, IteratorMode::Start).enumerate() {
            let (k, v) = item.expect("iterate");
            let i = c + j * CFS.len();
            assert_eq!(&k[..], &key(i)[..]);
            assert_eq!(&v[..], &value(i, generation(i))[..]);
            n += 1;
        }
        assert_eq!(n, KEYS / CFS.len(), "{}", CFS[c]);
    }
    drop(cfs);
    drop(db);
    drop(env);
    eprintln!(
        "reopened; all {KEYS} keys read back and scanned in {:.1?}",
        t.elapsed()
    );

    // The closed image: clean, and the DB files are there.
    fx.assert_fsck_clean();
    let names = fx.ls(&path);
    for must in ["CURRENT", "IDENTITY", "LOCK"] {
        assert!(names.iter().any(|n| n == must), "no {must} in {names:?}");
    }
    assert!(
        names.iter().any(|n| n.starts_with("MANIFEST-")),
        "{names:?}"
    );
    let sst_count = names.iter().filter(|n| n.ends_with(".sst")).count();
    assert!(sst_count > 0, "{names:?}");
    check_offline(&fx, &path);
    assert_host_dir_empty(&path);

    // The stock ldb reads it in another process through the preloaded FileSystem.
    require_tools();
    let t = Instant::now();
    for cf in CFS {
        let o = tool(
            "ldb",
            &[
                format!("--fs_uri={uri}"),
                format!("--db={path}"),
                format!("--column_family={cf}"),
                "scan".into(),
                "--no_value".into(),
            ],
            fx.dir.path(),
        );
        assert!(o.status.success(), "{}", show("ldb scan", &o));
        assert!(
            text(&o.stderr).contains(&factory_line(&fx.image)),
            "{}",
            show("ldb scan", &o)
        );
        let out = text(&o.stdout);
        assert_eq!(out.lines().count(), KEYS / CFS.len(), "ldb scan of {cf}");
        assert!(out.lines().all(|l| l.starts_with("key")), "{cf}");
    }
    eprintln!(
        "ldb --fs_uri={uri} --db={path} scan: {} keys in each of the {} column families ({:.1?})",
        KEYS / CFS.len(),
        CFS.len(),
        t.elapsed()
    );
    fx.assert_fsck_clean();

    // And the same image mounted with FUSE shows the DB directory.
    let mnt = fx.dir.path().join("mnt");
    let m = FuseMount::mount(&fx.image, &mnt);
    let in_mnt = mnt.join(path.trim_start_matches('/'));
    let mut listed: Vec<String> = std::fs::read_dir(&in_mnt)
        .expect("read the DB directory through FUSE")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(listed, expected, "FUSE vs blobfs ls");
    let current = std::fs::read_to_string(in_mnt.join("CURRENT")).expect("CURRENT");
    let manifest = current.trim();
    assert!(manifest.starts_with("MANIFEST-"), "{current:?}");
    assert!(in_mnt.join(manifest).is_file(), "{manifest} missing");
    let sst_bytes: u64 = listed
        .iter()
        .filter(|n| n.ends_with(".sst"))
        .map(|n| std::fs::metadata(in_mnt.join(n)).expect("stat").len())
        .sum();
    assert!(sst_bytes > (bytes as u64) / 2, "{sst_bytes} bytes of SST");
    m.unmount();
    fx.assert_fsck_clean();
    eprintln!(
        "rocksdb-rust-api: keys={KEYS} cfs={} ssts={sst_count} sst_mib={} ldb_scan=ok \
         fuse_ls=ok fsck=clean total={:.1?}",
        CFS.len(),
        sst_bytes >> 20,
        started.elapsed()
    );
}

/// The closed image opened offline with the library: `check()` clean, and the DB's
/// CURRENT there.
fn check_offline(fx: &Fixture, path: &str) {
    let dev = driver::uring::UringDevice::open(
        fx.image_str(),
        &driver::uring::UringOptions {
            lba_size: None,
            read_only: true,
        },
    )
    .expect("open the image");
    let fs = blobfs::FileSystem::open(
        Arc::new(dev),
        blobfs::FsOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .expect("open the filesystem read-only");
    let report = fs.check().expect("check");
    assert!(report.is_clean(), "{:#?}", report.problems);
    let mut ino = blobfs::ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = fs
            .lookup(ino, part.as_bytes())
            .unwrap_or_else(|e| panic!("{part} of {path}: {e}"))
            .ino;
    }
    let entries = fs.readdir(ino).expect("readdir the DB directory");
    assert!(entries.iter().any(|e| e.name == b"CURRENT"));
}

/// The host directory the `rocksdb` crate's `DB::open` made for `path`
/// (`std::fs::create_dir_all`, before RocksDB sees the path) holds nothing: RocksDB wrote
/// every file through BlobFS, into the image.
fn assert_host_dir_empty(path: &str) {
    let on_host: Vec<_> = std::fs::read_dir(path)
        .map(|d| d.map(|e| e.expect("entry").file_name()).collect())
        .unwrap_or_default();
    assert!(
        on_host.is_empty(),
        "RocksDB wrote to the host in {path}: {on_host:?}"
    );
}

/// A DB with one extra column family, some keys flushed to SST files and some only in the
/// memtable, so iterators merge both.
fn small_db(env: &rocksdb::Env, path: &str) -> DB {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_env(env);
    DB::open_cf(&opts, path, ["items"]).expect("open")
}

#[test]
fn iterators_snapshots_and_the_lock() {
    let fx = Fixture::new();
    let env = blobfs_rocksdb::env(&fx.uri()).expect("env");
    let path = fx.db_path("small");
    let db = small_db(&env, &path);
    let cf = db.cf_handle("items").expect("items");
    // Even keys 0..2000 flushed to an SST, odd ones in the memtable.
    for i in (0..2000).step_by(2) {
        db.put_cf(cf, key(i), value(i, 0)).expect("put");
    }
    db.flush_cf(cf).expect("flush");
    for i in (1..2000).step_by(2) {
        db.put_cf(cf, key(i), value(i, 0)).expect("put");
    }

    // Forward from the start, backward from the end: every key, in order.
    let fwd: Vec<Vec<u8>> = db
        .iterator_cf(cf, IteratorMode::Start)
        .map(|r| r.expect("next").0.to_vec())
        .collect();
    assert_eq!(fwd, (0..2000).map(key).collect::<Vec<_>>());
    let back: Vec<Vec<u8>> = db
        .iterator_cf(cf, IteratorMode::End)
        .map(|r| r.expect("prev").0.to_vec())
        .collect();
    assert_eq!(back, (0..2000).rev().map(key).collect::<Vec<_>>());
    // Seek to a key between two keys, both ways.
    let mut it = db.iterator_cf(cf, IteratorMode::From(b"key00000500x", Direction::Forward));
    let (k, v) = it.next().expect("one").expect("ok");
    assert_eq!((&k[..], &v[..]), (&key(501)[..], &value(501, 0)[..]));
    drop(it);
    let mut it = db.iterator_cf(cf, IteratorMode::From(b"key00000500x", Direction::Reverse));
    assert_eq!(&it.next().expect("one").expect("ok").0[..], &key(500)[..]);
    drop(it);
    // A raw iterator: seek, seek_for_prev, stepping.
    let mut raw = db.raw_iterator_cf(cf);
    raw.seek(key(1234));
    assert_eq!(raw.key(), Some(&key(1234)[..]));
    raw.next();
    assert_eq!(raw.key(), Some(&key(1235)[..]));
    raw.seek_for_prev(b"key99");
    assert_eq!(raw.key(), Some(&key(1999)[..]));
    raw.seek(b"key99");
    assert!(!raw.valid());
    raw.status().expect("iterator status");
    drop(raw);

    // A snapshot keeps seeing the old state after overwrites and deletes.
    let snap = db.snapshot();
    db.put_cf(cf, key(7), b"new value").expect("overwrite");
    db.delete_cf(cf, key(8)).expect("delete");
    db.put_cf(cf, b"zzz", b"after the snapshot").expect("put");
    db.flush_cf(cf).expect("flush");
    assert_eq!(
        snap.get_cf(cf, key(7)).expect("get"),
        Some(value(7, 0)),
        "the snapshot sees the old value"
    );
    assert_eq!(snap.get_cf(cf, key(8)).expect("get"), Some(value(8, 0)));
    assert_eq!(snap.get_cf(cf, b"zzz").expect("get"), None);
    assert_eq!(
        db.get_cf(cf, key(7)).expect("get").as_deref(),
        Some(&b"new value"[..])
    );
    assert_eq!(db.get_cf(cf, key(8)).expect("get"), None);
    assert_eq!(snap.iterator_cf(cf, IteratorMode::Start).count(), 2000);
    assert_eq!(db.iterator_cf(cf, IteratorMode::Start).count(), 2000);
    drop(snap);

    // A second open of the same DB while the first is open fails on the LOCK file, through
    // the same environment and through a second one on the same image.
    let mut opts = Options::default();
    opts.set_env(&env);
    let e = DB::open_cf(&opts, &path, ["items"]).expect_err("second open must fail");
    assert!(e.as_ref().contains("lock hold by current process"), "{e}");
    assert!(e.as_ref().contains(&format!("{path}/LOCK")), "{e}");
    let env2 = blobfs_rocksdb::env(&fx.uri()).expect("a second env on the same image");
    opts.set_env(&env2);
    let e = DB::open_cf(&opts, &path, ["items"]).expect_err("second open must fail");
    assert!(e.as_ref().contains("lock hold by current process"), "{e}");
    eprintln!("second open in this process while open: {e}");
    // A second process (the stock ldb with the library preloaded) is kept out by the
    // image's exclusive flock, with a message that says so.
    require_tools();
    let o = tool(
        "ldb",
        &[
            format!("--fs_uri={}", fx.uri()),
            format!("--db={path}"),
            "--column_family=items".into(),
            "get".into(),
            "key00000001".into(),
        ],
        fx.dir.path(),
    );
    assert!(!o.status.success(), "{}", show("ldb get while open", &o));
    let said = format!("{}{}", text(&o.stdout), text(&o.stderr));
    assert!(
        said.contains("in use by another process"),
        "{}",
        show("ldb get while open", &o)
    );
    eprintln!(
        "second open from another process (ldb) while open: {}",
        said.lines()
            .find(|l| l.contains("in use"))
            .unwrap_or_default()
    );
    drop(db);
    // Closed: the lock is free again.
    let db = DB::open_cf(&opts, &path, ["items"]).expect("open after close");
    let cf = db.cf_handle("items").expect("items");
    assert_eq!(db.get_cf(cf, key(1999)).expect("get"), Some(value(1999, 0)));
    drop(db);
    drop(opts);
    drop(env2);
    drop(env);
    fx.assert_fsck_clean();
}

#[test]
fn the_db_lives_in_the_image_and_dropping_the_env_closes_it() {
    let fx = Fixture::new();
    let canonical = std::fs::canonicalize(&fx.image).expect("canonical");
    let is_open = || blobfs_rocksdb::mount::open_images().contains(&canonical);
    // The crate makes the directory on the host (empty); the DB's files are in the image.
    let path = fx.db_path("in-image");
    let env = blobfs_rocksdb::env(&fx.uri()).expect("env");
    assert!(is_open());
    {
        // Clones of the environment, in several option sets: one environment underneath.
        let copies: Vec<rocksdb::Env> = (0..5).map(|_| env.clone()).collect();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_env(&copies[3]);
        drop(copies);
        let db = DB::open(&opts, &path).expect("open");
        db.put(b"where", b"in the image").expect("put");
        db.flush().expect("flush");
        assert_host_dir_empty(&path);
        // Still open: the DB and its options hold clones.
        drop(env);
        assert!(is_open());
        assert_eq!(
            db.get(b"where").expect("get").as_deref(),
            Some(&b"in the image"[..])
        );
    }
    // The last clone is gone: the environment was freed (once) and the image closed, so a
    // command can open it (it holds an exclusive flock while open).
    assert!(!is_open(), "the image is still open");
    assert_host_dir_empty(&path);
    let names = fx.ls(&path);
    assert!(names.iter().any(|n| n == "CURRENT"), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with(".sst")), "{names:?}");
    fx.assert_fsck_clean();
}

#[test]
fn env_reports_a_missing_image_with_the_mkfs_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("missing.img");
    let Err(e) = blobfs_rocksdb::env(&format!("blobfs://{}", img.display())) else {
        panic!("an env on a missing image");
    };
    assert!(e.msg.contains("blobfs mkfs"), "{e}");
    assert_eq!(e.code, libc::EIO);
    let Err(e) = blobfs_rocksdb::env("/not/a/uri") else {
        panic!("an env on something that is not a URI");
    };
    assert!(e.msg.contains("not a BlobFS URI"), "{e}");
}
