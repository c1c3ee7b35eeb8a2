//! Snapshots, clones, copy-on-write, inflate, decouple and the delete rules, on the memory
//! device, with reloads in between.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use blobstore::{BlobId, BlobOptions, Blobstore, FormatOptions, OpenOptions};
use driver::mem::{MemDevice, MemOptions};
use std::sync::Arc;
use support::{assert_clean, pattern};

const CS: u64 = 16 * 1024;

fn store() -> (MemDevice, Blobstore) {
    let mem = MemDevice::new(MemOptions {
        capacity: 4 << 20,
        lba_size: 512,
        ..MemOptions::default()
    })
    .unwrap();
    let s = Blobstore::create(
        Arc::new(mem.clone()),
        &FormatOptions {
            cluster_size: CS as u32,
            ..FormatOptions::default()
        },
        OpenOptions::default(),
    )
    .unwrap();
    (mem, s)
}

fn reload(mem: &MemDevice, s: Blobstore) -> Blobstore {
    s.close().unwrap();
    Blobstore::open(Arc::new(mem.clone()), OpenOptions::default()).unwrap()
}

fn read_all(s: &Blobstore, id: BlobId) -> Vec<u8> {
    let b = s.open_blob(id).unwrap();
    let mut out = vec![0u8; (b.num_clusters() * CS) as usize];
    if !out.is_empty() {
        b.read(&mut s.channel().unwrap(), 0, &mut out).unwrap();
    }
    out
}

fn write(s: &Blobstore, id: BlobId, off: u64, data: &[u8]) {
    let b = s.open_blob(id).unwrap();
    b.write(&mut s.channel().unwrap(), off, data).unwrap();
}

/// A thin blob of 4 clusters with data in clusters 0 and 2 (partly).
fn blob_with_data(s: &Blobstore) -> (BlobId, Vec<u8>) {
    let id = s
        .create_blob(BlobOptions {
            thin: true,
            clusters: 4,
            ..Default::default()
        })
        .unwrap();
    let mut model = vec![0u8; (4 * CS) as usize];
    for (off, len, tag) in [(0, CS, 1), (2 * CS + 1024, 4096, 2)] {
        let d = pattern(tag, off, len as usize);
        write(s, id, off, &d);
        model[off as usize..(off + len) as usize].copy_from_slice(&d);
    }
    s.open_blob(id)
        .unwrap()
        .set_xattr(b"name", b"base")
        .unwrap();
    s.sync().unwrap();
    (id, model)
}

#[test]
fn snapshot_freezes_and_the_blob_copies_on_write() {
    let (mem, s) = store();
    assert!(s.supports_clones());
    let (id, model) = blob_with_data(&s);
    let used = |s: &Blobstore| s.usage().clusters - s.usage().free;
    let before = used(&s);
    let snap = s.snapshot(id).unwrap();
    // Cheap: no cluster was allocated; the snapshot took them.
    assert_eq!(used(&s), before);
    assert_eq!(s.blob_meta(id).unwrap().allocated(), 0);
    assert_eq!(s.blob_meta(snap).unwrap().allocated(), 2);
    assert_eq!(read_all(&s, id), model);
    assert_eq!(read_all(&s, snap), model);
    assert_eq!(
        s.open_blob(snap).unwrap().get_xattr(b"name").unwrap(),
        b"base"
    );
    assert!(s.open_blob(snap).unwrap().is_read_only());
    // A partial write into a shared cluster copies the rest from the snapshot.
    let mut changed = model.clone();
    let d = pattern(3, 100, 512);
    write(&s, id, 512, &d);
    changed[512..1024].copy_from_slice(&d);
    assert_eq!(read_all(&s, id), changed);
    assert_eq!(read_all(&s, snap), model);
    assert_eq!(s.blob_meta(id).unwrap().allocated(), 1);
    let s = reload(&mem, s);
    assert_eq!(read_all(&s, id), changed);
    assert_eq!(read_all(&s, snap), model);
    assert_eq!(s.family(id).unwrap().ancestors, vec![snap]);
    assert_eq!(s.family(snap).unwrap().children, vec![id]);
    assert_clean(&s);
}

#[test]
fn clones_diverge_without_touching_the_snapshot() {
    let (mem, s) = store();
    let (id, model) = blob_with_data(&s);
    // Only snapshots (read-only) can be cloned.
    assert!(s.clone_blob(id).is_err());
    let snap = s.snapshot(id).unwrap();
    let a = s.clone_blob(snap).unwrap();
    let b = s.clone_blob(snap).unwrap();
    assert_eq!(read_all(&s, a), model);
    write(&s, a, 3 * CS, &[7u8; 4096]);
    write(&s, b, 0, &[9u8; 512]);
    let mut ma = model.clone();
    ma[(3 * CS) as usize..(3 * CS + 4096) as usize].fill(7);
    let mut mb = model.clone();
    mb[..512].fill(9);
    // Zeroing a shared range in a clone reads zeroes, not the snapshot's data.
    s.open_blob(a)
        .unwrap()
        .write_zeroes(&mut s.channel().unwrap(), 0, CS)
        .unwrap();
    ma[..CS as usize].fill(0);
    s.sync().unwrap();
    let s = reload(&mem, s);
    assert_eq!(read_all(&s, a), ma);
    assert_eq!(read_all(&s, b), mb);
    assert_eq!(read_all(&s, snap), model);
    assert_eq!(read_all(&s, id), model);
    let mut kids = s.family(snap).unwrap().children;
    kids.sort();
    assert_eq!(kids, vec![id, a, b]);
    assert_clean(&s);
}

#[test]
fn delete_rules_and_absorbing_the_only_clone() {
    let (mem, s) = store();
    let (id, model) = blob_with_data(&s);
    let snap = s.snapshot(id).unwrap();
    let c = s.clone_blob(snap).unwrap();
    // A snapshot with clones cannot be deleted, nor absorbed by one of two clones.
    assert!(s.delete_blob(snap).is_err());
    assert!(s.delete_absorbed(snap).is_err());
    s.delete_blob(c).unwrap();
    // With one clone left, the clone absorbs it and keeps its content.
    let mut changed = model.clone();
    write(&s, id, 2 * CS, &[4u8; 1024]);
    changed[(2 * CS) as usize..(2 * CS + 1024) as usize].fill(4);
    s.delete_absorbed(snap).unwrap();
    assert!(s.blob_meta(snap).is_err());
    assert_eq!(read_all(&s, id), changed);
    assert_eq!(s.family(id).unwrap().ancestors, Vec::<BlobId>::new());
    // Cluster 2's old copy (the snapshot's) was freed: only the blob's own remain.
    assert_eq!(s.blob_meta(id).unwrap().allocated(), 2);
    let s = reload(&mem, s);
    assert_eq!(read_all(&s, id), changed);
    let data: u64 = s
        .blob_ids()
        .into_iter()
        .map(|b| s.blob_meta(b).unwrap().allocated())
        .sum();
    assert_eq!(data, 2);
    assert_clean(&s);
}

#[test]
fn chains_inflate_and_decouple() {
    let (mem, s) = store();
    let (id, model) = blob_with_data(&s);
    let s1 = s.snapshot(id).unwrap();
    let mut v2 = model.clone();
    write(&s, id, CS, &[5u8; 4096]);
    v2[CS as usize..(CS + 4096) as usize].fill(5);
    let s2 = s.snapshot(id).unwrap();
    // id -> s2 -> s1: reads go down the chain.
    assert_eq!(s.family(id).unwrap().ancestors, vec![s2, s1]);
    assert_eq!(read_all(&s, id), v2);
    assert_eq!(read_all(&s, s1), model);
    // Decouple copies only what s2 itself holds (cluster 1), then links to s1.
    let c = s.clone_blob(s2).unwrap();
    s.decouple_parent(c).unwrap();
    assert_eq!(s.family(c).unwrap().ancestors, vec![s1]);
    assert_eq!(s.blob_meta(c).unwrap().allocated(), 1);
    assert_eq!(read_all(&s, c), v2);
    // Inflate: independent, every cluster its own.
    s.inflate(id).unwrap();
    assert!(s.family(id).unwrap().ancestors.is_empty());
    assert_eq!(s.blob_meta(id).unwrap().allocated(), 4);
    assert_eq!(read_all(&s, id), v2);
    let s = reload(&mem, s);
    assert_eq!(read_all(&s, id), v2);
    assert_eq!(read_all(&s, c), v2);
    assert_eq!(read_all(&s, s2), v2);
    assert_eq!(read_all(&s, s1), model);
    assert_clean(&s);
}

#[test]
fn shrink_then_grow_reads_zeroes_and_seek_finds_data() {
    let (_mem, s) = store();
    let (id, model) = blob_with_data(&s);
    let snap = s.snapshot(id).unwrap();
    let b = s.open_blob(id).unwrap();
    // Data in clusters 0 and 2 (through the snapshot), holes in 1 and 3.
    assert_eq!(b.seek_data(0), Some(0));
    assert_eq!(b.seek_hole(0), CS);
    assert_eq!(b.seek_data(CS + 5), Some(2 * CS));
    assert_eq!(b.seek_hole(2 * CS), 3 * CS);
    assert_eq!(b.seek_data(3 * CS), None);
    // Shrinking below the shared range and growing back must not bring the data back.
    b.resize(1).unwrap();
    b.resize(4).unwrap();
    let got = read_all(&s, id);
    assert_eq!(&got[..CS as usize], &model[..CS as usize]);
    assert!(got[CS as usize..].iter().all(|&x| x == 0));
    assert_eq!(b.seek_data(CS), None);
    assert_eq!(read_all(&s, snap), model);
    drop(b);
    assert_clean(&s);
}
