//! Filesystem snapshots and clones, and reflinks, through the library API on the memory
//! device: trees compared byte for byte after changes, reopens and deletes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use blobfs::{FileSystem, FsOptions, Ino, Kind, SnapKind, ROOT_INO};
use driver::mem::{MemDevice, MemOptions};
use driver::Device;
use std::collections::BTreeMap;
use std::sync::Arc;

fn mem(cap: u64) -> MemDevice {
    MemDevice::new(MemOptions {
        capacity: cap,
        lba_size: 512,
        ..Default::default()
    })
    .unwrap()
}

fn open(dev: &MemDevice, view: Option<&str>, read_only: bool) -> FileSystem {
    FileSystem::open(
        Arc::new(dev.clone()),
        FsOptions {
            sync_interval: None,
            read_only,
            view: view.map(str::to_string),
            ..Default::default()
        },
    )
    .unwrap()
}

fn new_fs(dev: &MemDevice) -> FileSystem {
    let d: Arc<dyn Device> = Arc::new(dev.clone());
    FileSystem::format(
        Arc::clone(&d),
        &blobstore::FormatOptions {
            cluster_size: 64 * 1024,
            ..Default::default()
        },
    )
    .unwrap();
    open(dev, None, false)
}

fn clean(fs: &FileSystem) {
    let r = fs.check().unwrap();
    assert!(r.is_clean(), "{:#?}", r.problems);
}

/// The whole tree as path -> content (directories as `None`).
fn tree(fs: &FileSystem) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<(Ino, String)> = vec![(ROOT_INO, String::new())];
    while let Some((dir, path)) = stack.pop() {
        for e in fs.readdir(dir).unwrap() {
            let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
            match e.kind {
                Kind::Dir => {
                    out.insert(p.clone(), None);
                    stack.push((e.ino, p));
                }
                Kind::Symlink => {
                    out.insert(p, Some(fs.readlink(e.ino).unwrap()));
                }
                _ => {
                    let size = fs.getattr(e.ino).unwrap().size as usize;
                    out.insert(p, Some(fs.read(e.ino, 0, size).unwrap()));
                }
            }
        }
    }
    out
}

fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// A tree of a few directories and files of several sizes (some over a cluster).
fn build(fs: &FileSystem) {
    let a = fs.mkdir(ROOT_INO, b"a", 0o755, 0, 0).unwrap().ino;
    let b = fs.mkdir(a, b"b", 0o755, 0, 0).unwrap().ino;
    for (dir, name, seed, len) in [
        (ROOT_INO, "top", 1u8, 100usize),
        (a, "mid", 2, 70_000),
        (b, "deep", 3, 200_000),
        (b, "empty", 4, 0),
    ] {
        let f = fs.create(dir, name.as_bytes(), 0o644, 0, 0).unwrap().ino;
        if len > 0 {
            fs.write(f, 0, &data(seed, len)).unwrap();
        }
    }
    fs.symlink(ROOT_INO, b"link", b"a/mid", 0, 0).unwrap();
    fs.sync_all().unwrap();
}

#[test]
fn snapshot_keeps_the_old_tree_and_a_clone_diverges() {
    let dev = mem(64 << 20);
    let fs = new_fs(&dev);
    build(&fs);
    let before = tree(&fs);
    let info = fs.snapshot("monday").unwrap();
    assert_eq!(info.kind, SnapKind::Snapshot);
    assert!(fs.snapshot("monday").is_err(), "names are unique");
    assert!(fs.snapshot("bad/name").is_err());
    clean(&fs);
    // Change the live tree: overwrite part of a file, append, delete, create.
    let a = fs.lookup(ROOT_INO, b"a").unwrap().ino;
    let b = fs.lookup(a, b"b").unwrap().ino;
    let deep = fs.lookup(b, b"deep").unwrap().ino;
    fs.write(deep, 1000, b"changed").unwrap();
    let mid = fs.lookup(a, b"mid").unwrap().ino;
    fs.write(mid, 70_000, &data(9, 5000)).unwrap();
    fs.unlink(ROOT_INO, b"top").unwrap();
    let n = fs.create(ROOT_INO, b"new", 0o644, 0, 0).unwrap().ino;
    fs.write(n, 0, b"new file").unwrap();
    fs.sync_all().unwrap();
    let live = tree(&fs);
    assert_ne!(live, before);
    clean(&fs);
    fs.close().unwrap();

    // The snapshot shows the tree as it was, byte for byte; it refuses to open writable.
    let snap = open(&dev, Some("monday"), true);
    assert_eq!(tree(&snap), before);
    assert!(snap.create(ROOT_INO, b"x", 0o644, 0, 0).is_err());
    drop(snap);
    assert!(FileSystem::open(
        Arc::new(dev.clone()),
        FsOptions {
            view: Some("monday".into()),
            ..Default::default()
        }
    )
    .is_err());

    // A clone starts as the snapshot and diverges without touching it or the live tree.
    let fs = open(&dev, None, false);
    fs.clone_snapshot("monday", "experiment").unwrap();
    assert!(
        fs.delete_snapshot("monday").is_err(),
        "a snapshot with a clone stays"
    );
    fs.close().unwrap();
    let c = open(&dev, Some("experiment"), false);
    assert_eq!(tree(&c), before);
    let top = c.lookup(ROOT_INO, b"top").unwrap().ino;
    c.write(top, 0, b"clone writes").unwrap();
    let f = c
        .create(ROOT_INO, b"only-in-clone", 0o644, 0, 0)
        .unwrap()
        .ino;
    c.write(f, 0, &data(7, 90_000)).unwrap();
    c.unlink(ROOT_INO, b"link").unwrap();
    let mut cloned = before.clone();
    let mut t = data(1, 100);
    t[..12].copy_from_slice(b"clone writes");
    cloned.insert("/top".into(), Some(t));
    cloned.insert("/only-in-clone".into(), Some(data(7, 90_000)));
    cloned.remove("/link");
    assert_eq!(tree(&c), cloned);
    c.close().unwrap();
    let c = open(&dev, Some("experiment"), false);
    assert_eq!(tree(&c), cloned);
    drop(c);
    let snap = open(&dev, Some("monday"), true);
    assert_eq!(tree(&snap), before);
    drop(snap);
    let fs = open(&dev, None, false);
    assert_eq!(tree(&fs), live);
    clean(&fs);
    let list: Vec<(String, SnapKind)> = fs
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|i| (i.name, i.kind))
        .collect();
    assert_eq!(
        list,
        vec![
            ("experiment".to_string(), SnapKind::Clone),
            ("monday".to_string(), SnapKind::Snapshot)
        ]
    );

    // Deleting the clone, then the snapshot, frees their blobs and keeps the live tree.
    let blobs_with_both = fs.store().blob_ids().len();
    fs.delete_snapshot("experiment").unwrap();
    clean(&fs);
    fs.delete_snapshot("monday").unwrap();
    clean(&fs);
    assert!(fs.store().blob_ids().len() < blobs_with_both);
    assert_eq!(tree(&fs), live);
    assert!(fs.snapshots().unwrap().is_empty());
    // Every remaining blob is a live inode: no parents left behind.
    for id in fs.store().blob_ids() {
        assert_eq!(fs.store().blob_meta(id).unwrap().parent.0, 0, "blob {id}");
    }
    fs.close().unwrap();
    let fs = open(&dev, None, false);
    assert_eq!(tree(&fs), live);
    clean(&fs);
}

#[test]
fn reflink_shares_data_until_either_side_writes() {
    let dev = mem(64 << 20);
    let fs = new_fs(&dev);
    let src = fs.create(ROOT_INO, b"src", 0o640, 5, 6).unwrap().ino;
    let body = data(5, 300_000);
    fs.write(src, 0, &body).unwrap();
    fs.sync_all().unwrap();
    let used_before = fs.statfs();
    let copy = fs.reflink(src, ROOT_INO, b"copy", 7, 8).unwrap();
    assert_eq!(copy.size, body.len() as u64);
    assert_eq!(copy.uid, 7);
    assert_eq!(fs.read(copy.ino, 0, body.len()).unwrap(), body);
    // No data was copied.
    let used_after = fs.statfs();
    assert_eq!(used_after.bfree, used_before.bfree);
    assert!(
        fs.reflink(src, ROOT_INO, b"copy", 0, 0).is_err(),
        "name taken"
    );
    fs.write(copy.ino, 10, b"diverged").unwrap();
    fs.write(src, 200_000, b"source moved on").unwrap();
    let mut want_copy = body.clone();
    want_copy[10..18].copy_from_slice(b"diverged");
    let mut want_src = body.clone();
    want_src[200_000..200_015].copy_from_slice(b"source moved on");
    fs.sync_all().unwrap();
    clean(&fs);
    fs.close().unwrap();
    let fs = open(&dev, None, false);
    assert_eq!(fs.read(copy.ino, 0, body.len()).unwrap(), want_copy);
    assert_eq!(fs.read(src, 0, body.len()).unwrap(), want_src);
    // Deleting both files leaves no hidden frozen blob behind.
    fs.unlink(ROOT_INO, b"src").unwrap();
    fs.unlink(ROOT_INO, b"copy").unwrap();
    fs.sync_all().unwrap();
    assert_eq!(fs.store().blob_ids().len(), 1, "only the root is left");
    clean(&fs);
}

#[test]
fn seek_data_and_hole_see_clusters_dirty_pages_and_parents() {
    let dev = mem(64 << 20);
    let fs = new_fs(&dev);
    let cs = 64 * 1024u64;
    let f = fs.create(ROOT_INO, b"sparse", 0o644, 0, 0).unwrap().ino;
    // Data in cluster 0 and cluster 5 (written back), a dirty page in cluster 8.
    fs.write(f, 100, b"a").unwrap();
    fs.write(f, 5 * cs + 10, b"b").unwrap();
    fs.fsync(f).unwrap();
    fs.write(f, 8 * cs + 4096, b"c").unwrap();
    let size = 8 * cs + 4097;
    assert_eq!(fs.getattr(f).unwrap().size, size);
    assert_eq!(fs.seek_data(f, 0).unwrap(), Some(0));
    assert_eq!(fs.seek_hole(f, 0).unwrap(), Some(cs));
    assert_eq!(fs.seek_data(f, cs).unwrap(), Some(5 * cs));
    assert_eq!(fs.seek_hole(f, 5 * cs).unwrap(), Some(6 * cs));
    assert_eq!(fs.seek_data(f, 6 * cs).unwrap(), Some(8 * cs + 4096));
    assert_eq!(fs.seek_hole(f, 8 * cs + 4096).unwrap(), Some(size));
    assert_eq!(fs.seek_data(f, size).unwrap(), None);
    assert_eq!(fs.seek_hole(f, size).unwrap(), None);
    // A reflinked copy sees the same data through its hidden parent.
    fs.fsync(f).unwrap();
    let copy = fs.reflink(f, ROOT_INO, b"copy", 0, 0).unwrap().ino;
    assert_eq!(fs.seek_data(copy, cs).unwrap(), Some(5 * cs));
    assert_eq!(fs.seek_hole(copy, 0).unwrap(), Some(cs));
}

/// After a snapshot every live file is a clone: appends into clusters it already owns still
/// take one flush per fsync; the first write into a shared cluster copies it (ordered).
#[test]
fn appends_to_a_snapshotted_file_keep_one_flush_fsyncs() {
    let dev = mem(64 << 20);
    let fs = new_fs(&dev);
    let f = fs.create(ROOT_INO, b"wal", 0o644, 0, 0).unwrap().ino;
    fs.write(f, 0, &[1u8; 100]).unwrap();
    fs.fsync(f).unwrap();
    fs.snapshot("s").unwrap();
    // The first append copies the shared cluster (and confirms), then each append+fsync
    // into the now-own cluster takes one flush.
    let mut want = vec![1u8; 100];
    fs.write(f, 100, &[2u8; 100]).unwrap();
    want.extend_from_slice(&[2u8; 100]);
    fs.fsync(f).unwrap();
    fs.write(f, 200, &[3u8; 100]).unwrap();
    want.extend_from_slice(&[3u8; 100]);
    fs.fsync(f).unwrap();
    let before = dev.stats().flushes;
    for i in 0..20u8 {
        let at = want.len() as u64;
        fs.write(f, at, &[i; 50]).unwrap();
        want.extend_from_slice(&[i; 50]);
        fs.fsync(f).unwrap();
    }
    assert_eq!(dev.stats().flushes - before, 20);
    fs.close().unwrap();
    let fs = open(&dev, None, false);
    assert_eq!(fs.read(f, 0, 1 << 20).unwrap(), want);
    let snap = open(&dev, Some("s"), true);
    assert_eq!(snap.read(f, 0, 1 << 20).unwrap(), vec![1u8; 100]);
    drop(snap);
    clean(&fs);
}
