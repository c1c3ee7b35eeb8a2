//! The consistency checks (live `Blobstore::check` and offline `fsck::check_store`) on
//! stores with snapshots and clones: shared and exclusive cluster counts, and parent links
//! damaged on purpose (a missing parent, a cycle, a writable parent, `through` beyond the
//! blob's size), which must be reported, never panic, and be repaired where they can be.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use blobstore::check::Sharing;
use blobstore::format::record::Record;
use blobstore::fsck::{check_store, repair_store, StoreCheck};
use blobstore::{BlobId, BlobOptions, Blobstore, Error, OpenOptions, FLAG_READ_ONLY, FLAG_THIN};
use driver::mem::MemDevice;
use driver::Device;
use std::sync::Arc;
use support::{assert_clean, pattern};

const CS: u64 = 16 * 1024;

fn opts() -> OpenOptions {
    OpenOptions {
        background_checkpoint: false,
        ..OpenOptions::default()
    }
}

fn dev(m: &MemDevice) -> Arc<dyn Device> {
    Arc::new(m.clone())
}

fn open(m: &MemDevice) -> Blobstore {
    Blobstore::open(dev(m), opts()).unwrap()
}

fn write(s: &Blobstore, id: BlobId, off: u64, data: &[u8]) {
    s.open_blob(id)
        .unwrap()
        .write(&mut s.channel().unwrap(), off, data)
        .unwrap();
}

fn read_all(s: &Blobstore, id: BlobId) -> Vec<u8> {
    let b = s.open_blob(id).unwrap();
    let mut out = vec![0u8; (b.num_clusters() * CS) as usize];
    if !out.is_empty() {
        b.read(&mut s.channel().unwrap(), 0, &mut out).unwrap();
    }
    out
}

/// The blobs of [`image`].
#[derive(Clone, Copy, Debug)]
struct Ids {
    /// 4 clusters, snapshotted: a child of `snap`, one cluster of its own (copy-on-write).
    base: BlobId,
    /// The snapshot: read-only, holds base's 2 old clusters (shared).
    snap: BlobId,
    /// A clone of `snap` with one cluster of its own.
    clone: BlobId,
    /// Independent, one cluster.
    plain: BlobId,
}

/// A store with a snapshot and a clone (2 shared clusters, 3 exclusive), synced; a
/// checkpoint sits between the snapshot and the clone, so both the checkpoint's and the
/// log's parent links are replayed.
fn image() -> (MemDevice, Ids) {
    let mem = MemDevice::with_capacity(8 << 20, 512).unwrap();
    let s = Blobstore::create(
        dev(&mem),
        &blobstore::FormatOptions {
            cluster_size: CS as u32,
            ..Default::default()
        },
        opts(),
    )
    .unwrap();
    let thin = |clusters| {
        s.create_blob(BlobOptions {
            thin: true,
            clusters,
            ..Default::default()
        })
        .unwrap()
    };
    let base = thin(4);
    let plain = thin(1);
    write(&s, base, 0, &pattern(1, 0, CS as usize));
    write(&s, base, 2 * CS, &pattern(2, 2 * CS, CS as usize));
    write(&s, plain, 0, &pattern(3, 0, 512));
    let snap = s.snapshot(base).unwrap();
    s.sync().unwrap();
    s.checkpoint().unwrap();
    let clone = s.clone_blob(snap).unwrap();
    write(&s, clone, CS, &pattern(4, CS, CS as usize));
    write(&s, base, 512, &pattern(5, 512, 1024));
    s.sync().unwrap();
    s.close().unwrap();
    (
        mem,
        Ids {
            base,
            snap,
            clone,
            plain,
        },
    )
}

fn counts(s: Sharing) -> (u64, u64) {
    (s.shared_clusters, s.exclusive_clusters)
}

fn kinds(c: &StoreCheck) -> Vec<&'static str> {
    c.findings.iter().map(|f| f.kind).collect()
}

/// The live check, the store's own figures and the offline check all count the same.
fn assert_counts(mem: &MemDevice, s: &Blobstore, shared: u64, exclusive: u64) {
    let r = s.check().unwrap();
    assert!(r.is_clean(), "{:#?}", r.problems);
    assert!(r.verified_on_disk);
    assert_eq!(
        (r.shared_clusters, r.exclusive_clusters),
        (shared, exclusive)
    );
    assert_eq!(r.shared_clusters + r.exclusive_clusters, r.blob_clusters);
    assert_eq!(counts(s.cluster_sharing()), (shared, exclusive));
    let c = check_store(&dev(mem)).unwrap();
    assert!(c.is_clean(), "{:?}", c.findings);
    assert_eq!(c.sharing, Some(s.cluster_sharing()));
}

#[test]
fn shared_and_exclusive_counts() {
    let (mem, ids) = image();
    let s = open(&mem);
    // The snapshot's 2 clusters are shared (base and clone read through it); base's
    // copied cluster, the clone's own and plain's are exclusive.
    assert_counts(&mem, &s, 2, 3);
    let sh = s.cluster_sharing();
    assert_eq!((sh.linked_blobs, sh.parent_blobs), (2, 1));
    assert_eq!(s.blob_meta(ids.snap).unwrap().allocated(), 2);
    // A second snapshot of the base: a chain base -> snap2 -> snap. Base's own cluster
    // moves to snap2, which has a child now: shared.
    let snap2 = s.snapshot(ids.base).unwrap();
    s.sync().unwrap();
    assert_counts(&mem, &s, 3, 2);
    assert_eq!(s.family(ids.base).unwrap().ancestors, vec![snap2, ids.snap]);
    let sh = s.cluster_sharing();
    assert_eq!((sh.linked_blobs, sh.parent_blobs), (3, 2));
    // Inflate the clone: it copies what it read through the snapshot (3 clusters more,
    // exclusive) and leaves it; the snapshot still has snap2 as a child.
    s.inflate(ids.clone).unwrap();
    s.sync().unwrap();
    assert_counts(&mem, &s, 3, 5);
    // Delete the clone, absorb snap2 into base (base takes snap2's cluster), then the
    // snapshot into base: nothing is shared any more, nothing leaked.
    s.delete_blob(ids.clone).unwrap();
    s.delete_absorbed(snap2).unwrap();
    assert_counts(&mem, &s, 2, 2);
    s.delete_absorbed(ids.snap).unwrap();
    assert_counts(&mem, &s, 0, 3);
    assert_eq!(s.blob_meta(ids.base).unwrap().allocated(), 2);
    // A reload rebuilds the same figures.
    let s2 = {
        s.close().unwrap();
        open(&mem)
    };
    assert_counts(&mem, &s2, 0, 3);
    let _ = ids.plain;
}

#[test]
fn counts_survive_a_reload_and_a_checkpoint() {
    let (mem, _) = image();
    let s = open(&mem);
    let before = s.cluster_sharing();
    s.checkpoint().unwrap();
    s.close().unwrap();
    let s = open(&mem);
    assert_eq!(s.cluster_sharing(), before);
    assert_counts(&mem, &s, 2, 3);
}

/// Injects `recs` into the image's log, as one group (the handle is dropped: its memory no
/// longer matches the device).
fn inject(mem: &MemDevice, recs: Vec<Record>) {
    let s = open(mem);
    s.debug_inject_records(recs).unwrap();
    drop(s);
}

/// The offline check of a damaged image: not clean, with exactly these finding kinds, all
/// repairable; the repair keeps every blob's content and leaves a clean image.
fn check_and_repair(mem: &MemDevice, want: &[&str], contents: &[(BlobId, Vec<u8>)]) {
    let c = check_store(&dev(mem)).unwrap();
    assert_eq!(kinds(&c), want, "{:?}", c.findings);
    assert!(!c.is_clean());
    assert_eq!(c.errors(), want.len());
    assert!(c.repairable(), "{:?}", c.findings);
    let (s, done) = repair_store(dev(mem), c).unwrap();
    assert_eq!(done.len(), want.len(), "{done:?}");
    assert_clean(&s);
    for (id, data) in contents {
        assert_eq!(&read_all(&s, *id), data, "blob {id} changed");
    }
    s.close().unwrap();
    let c = check_store(&dev(mem)).unwrap();
    assert!(c.is_clean(), "after repair: {:?}", c.findings);
    assert_eq!(counts(c.sharing.unwrap()), (2, 3));
    let s = open(mem);
    assert_clean(&s);
    for (id, data) in contents {
        assert_eq!(&read_all(&s, *id), data, "blob {id} changed after reload");
    }
}

fn contents(mem: &MemDevice, ids: Ids) -> Vec<(BlobId, Vec<u8>)> {
    let s = open(mem);
    [ids.base, ids.snap, ids.clone, ids.plain]
        .into_iter()
        .map(|id| (id, read_all(&s, id)))
        .collect()
}

fn load_error(mem: &MemDevice) -> String {
    match Blobstore::open(dev(mem), opts()) {
        Err(Error::Corruption(why)) => why,
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("a damaged image loaded"),
    }
}

#[test]
fn dangling_parent_fails_the_load_and_fsck_drops_it() {
    let (mem, ids) = image();
    let before = contents(&mem, ids);
    inject(
        &mem,
        vec![Record::SetParent {
            id: ids.clone,
            parent: BlobId(999),
            through: 4,
        }],
    );
    let why = load_error(&mem);
    assert!(why.contains("not found"), "{why}");
    let c = check_store(&dev(&mem)).unwrap();
    let f = &c.findings[0];
    assert!(
        f.detail.contains("SetParent") && f.detail.contains("not found"),
        "{f:?}"
    );
    // The record is skipped: the clone keeps reading through the snapshot.
    check_and_repair(&mem, &["invalid-record"], &before);
}

#[test]
fn parent_cycle_fails_the_load_and_fsck_drops_it() {
    let (mem, ids) = image();
    let before = contents(&mem, ids);
    // The snapshot would read through its own child.
    inject(
        &mem,
        vec![Record::SetParent {
            id: ids.snap,
            parent: ids.clone,
            through: 4,
        }],
    );
    let why = load_error(&mem);
    assert!(why.contains("cycle"), "{why}");
    let c = check_store(&dev(&mem)).unwrap();
    assert!(c.findings[0].detail.contains("cycle"), "{:?}", c.findings);
    check_and_repair(&mem, &["invalid-record"], &before);
    // A blob as its own parent, in the same group as a valid record.
    let (mem, ids) = image();
    inject(
        &mem,
        vec![
            Record::SetParent {
                id: ids.plain,
                parent: ids.plain,
                through: 1,
            },
            Record::SetXattr {
                id: ids.plain,
                ns: blobstore::XattrNs::User,
                name: b"k".to_vec(),
                value: b"v".to_vec(),
            },
        ],
    );
    assert!(load_error(&mem).contains("cycle"));
    let c = check_store(&dev(&mem)).unwrap();
    assert_eq!(kinds(&c), ["invalid-record"]);
    assert_eq!(counts(c.sharing.unwrap()), (2, 3));
}

#[test]
fn writable_parent_is_reported_and_made_read_only() {
    let (mem, ids) = image();
    let before = contents(&mem, ids);
    inject(
        &mem,
        vec![Record::SetFlags {
            id: ids.snap,
            flags: FLAG_THIN,
        }],
    );
    // The load accepts it; the live check does not.
    let s = open(&mem);
    let r = s.check().unwrap();
    assert_eq!(r.problems.len(), 2, "{:#?}", r.problems);
    assert!(
        r.problems.iter().all(|p| p.contains("writable")),
        "{:#?}",
        r.problems
    );
    assert_eq!((r.shared_clusters, r.exclusive_clusters), (2, 3));
    drop(s);
    // One finding per child (base and clone).
    check_and_repair(&mem, &["parent-writable", "parent-writable"], &before);
    let s = open(&mem);
    assert_eq!(
        s.blob_meta(ids.snap).unwrap().flags,
        FLAG_THIN | FLAG_READ_ONLY
    );
}

#[test]
fn through_beyond_the_size_is_reported_and_limited() {
    let (mem, ids) = image();
    let before = contents(&mem, ids);
    inject(
        &mem,
        vec![Record::SetParent {
            id: ids.clone,
            parent: ids.snap,
            through: 9,
        }],
    );
    let s = open(&mem);
    let r = s.check().unwrap();
    assert_eq!(r.problems.len(), 1, "{:#?}", r.problems);
    assert!(
        r.problems[0].contains("up to index 9, beyond its 4 clusters"),
        "{}",
        r.problems[0]
    );
    drop(s);
    check_and_repair(&mem, &["through-beyond-size"], &before);
    let s = open(&mem);
    assert_eq!(s.blob_meta(ids.clone).unwrap().through, 4);
    // Growing the clone now reads zeroes past its old size, not the snapshot's data.
    let b = s.open_blob(ids.clone).unwrap();
    b.resize(6).unwrap();
    let mut tail = vec![1u8; (2 * CS) as usize];
    b.read(&mut s.channel().unwrap(), 4 * CS, &mut tail)
        .unwrap();
    assert!(tail.iter().all(|&x| x == 0));
}

#[test]
fn damage_never_panics_the_offline_check() {
    // Every parent-link record with ids around the image's, injected alone: the offline
    // check returns (clean or with findings), and a strict load either loads or reports
    // corruption.
    let (mem, ids) = image();
    let all = [
        BlobId(0),
        ids.base,
        ids.snap,
        ids.clone,
        ids.plain,
        BlobId(77),
    ];
    let (mut n, mut loaded, mut corrupt, mut found, mut repaired) = (0, 0, 0, 0, 0);
    for id in all {
        for parent in all {
            for through in [0, 3, 4, 100] {
                let m = mem.duplicate();
                inject(
                    &m,
                    vec![Record::SetParent {
                        id,
                        parent,
                        through,
                    }],
                );
                let c = check_store(&dev(&m)).unwrap();
                assert!(c.fatal.is_none(), "{:?}", c.fatal);
                assert!(c.sharing.is_some());
                match Blobstore::open(dev(&m), opts()) {
                    Ok(s) => {
                        loaded += 1;
                        // What loads, the live and offline checks judge alike.
                        let r = s.check().unwrap();
                        assert_eq!(r.is_clean(), c.is_clean(), "{:?} / {:?}", r, c.findings);
                        assert_eq!(
                            (r.shared_clusters, r.exclusive_clusters),
                            counts(c.sharing.unwrap())
                        );
                    }
                    Err(Error::Corruption(_)) => {
                        corrupt += 1;
                        assert!(!c.is_clean());
                    }
                    Err(e) => panic!("{e}"),
                }
                if !c.is_clean() {
                    found += 1;
                }
                if c.repairable() && !c.is_clean() {
                    let (s, _) = repair_store(dev(&m), c).unwrap();
                    assert_clean(&s);
                    repaired += 1;
                }
                n += 1;
            }
        }
    }
    assert_eq!(n, 6 * 6 * 4);
    eprintln!(
        "parent-link damage: cases={n} loaded={loaded} corrupt={corrupt} found={found} \
         repaired={repaired}"
    );
    assert!(loaded > 0 && corrupt > 0 && found > corrupt && repaired == found);
}
