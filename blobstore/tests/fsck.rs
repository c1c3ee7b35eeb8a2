//! The store's offline check and repair (blobstore::fsck).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use blobstore::format::record::{Record, XattrNs};
use blobstore::fsck::{check_store, repair_store};
use blobstore::{BlobId, BlobOptions, Blobstore, Error, OpenOptions};
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

/// A store with two blobs of data, some xattrs and a log after a checkpoint.
fn image() -> (MemDevice, BlobId, BlobId) {
    let mem = MemDevice::with_capacity(8 << 20, 512).unwrap();
    let dev: Arc<dyn Device> = Arc::new(mem.clone());
    let store = Blobstore::create(
        Arc::clone(&dev),
        &blobstore::FormatOptions {
            cluster_size: CS as u32,
            ..Default::default()
        },
        opts(),
    )
    .unwrap();
    let a = store
        .create_blob(BlobOptions {
            thin: true,
            clusters: 2,
            ..Default::default()
        })
        .unwrap();
    let b = store
        .create_blob(BlobOptions {
            thin: true,
            clusters: 2,
            ..Default::default()
        })
        .unwrap();
    let mut ch = store.channel().unwrap();
    for (id, tag) in [(a, 1u64), (b, 2)] {
        let blob = store.open_blob(id).unwrap();
        blob.write(&mut ch, 0, &pattern(tag, 0, CS as usize))
            .unwrap();
        blob.set_xattr(b"k", b"v").unwrap();
    }
    store.checkpoint().unwrap();
    let blob = store.open_blob(a).unwrap();
    blob.set_xattr_ns(XattrNs::Internal, b"later", b"1")
        .unwrap();
    store.sync().unwrap();
    drop(blob);
    drop(ch);
    drop(store);
    (mem, a, b)
}

fn dev(m: &MemDevice) -> Arc<dyn Device> {
    Arc::new(m.clone())
}

fn kinds(m: &MemDevice) -> Vec<&'static str> {
    check_store(&dev(m))
        .unwrap()
        .findings
        .iter()
        .map(|f| f.kind)
        .collect()
}

fn read(store: &Blobstore, id: BlobId, off: u64, len: usize) -> Vec<u8> {
    let mut ch = store.channel().unwrap();
    let mut out = vec![0u8; len];
    store
        .open_blob(id)
        .unwrap()
        .read(&mut ch, off, &mut out)
        .unwrap();
    out
}

#[test]
fn clean_images_have_no_findings() {
    let mem = MemDevice::with_capacity(8 << 20, 4096).unwrap();
    Blobstore::format(dev(&mem), &Default::default()).unwrap();
    assert!(check_store(&dev(&mem)).unwrap().is_clean(), "fresh mkfs");
    let (mem, _, _) = image();
    let c = check_store(&dev(&mem)).unwrap();
    assert!(c.is_clean(), "{:?}", c.findings);
    assert!(matches!(
        check_store(&dev(&MemDevice::with_capacity(8 << 20, 512).unwrap())),
        Err(Error::NotABlobstore(_))
    ));
}

#[test]
fn cluster_owned_twice_is_cloned() {
    let (mem, a, b) = image();
    let store = Blobstore::open(dev(&mem), opts()).unwrap();
    let ca = store.blob_meta(a).unwrap().clusters[0];
    assert!(ca.is_some());
    // b's index 1 (never written) now claims a's first cluster.
    store
        .debug_inject_records(vec![Record::MapRun {
            id: b,
            index: 1,
            first: ca,
            count: 1,
        }])
        .unwrap();
    drop(store);
    assert!(Blobstore::open(dev(&mem), opts())
        .unwrap_err()
        .is_corruption());
    let c = check_store(&dev(&mem)).unwrap();
    assert_eq!(
        c.findings.iter().map(|f| f.kind).collect::<Vec<_>>(),
        ["cluster-owned-twice"]
    );
    assert!(c.repairable());
    let (store, done) = repair_store(dev(&mem), c).unwrap();
    assert!(done.iter().any(|d| d.contains("cloned")), "{done:?}");
    assert_clean(&store);
    // Both keep the bytes they saw.
    assert_eq!(read(&store, a, 0, CS as usize), pattern(1, 0, CS as usize));
    assert_eq!(read(&store, b, CS, CS as usize), pattern(1, 0, CS as usize));
    assert_ne!(store.blob_meta(b).unwrap().clusters[1], ca);
    drop(store);
    assert!(check_store(&dev(&mem)).unwrap().is_clean());
    assert_clean(&Blobstore::open(dev(&mem), opts()).unwrap());
}

#[test]
fn unknown_flags_and_impossible_records_are_dropped() {
    let (mem, a, _) = image();
    let store = Blobstore::open(dev(&mem), opts()).unwrap();
    store
        .debug_inject_records(vec![
            Record::SetFlags {
                id: a,
                flags: 0x101,
            },
            Record::SetXattr {
                id: BlobId(999),
                ns: XattrNs::User,
                name: b"x".to_vec(),
                value: vec![],
            },
        ])
        .unwrap();
    drop(store);
    let k = kinds(&mem);
    assert_eq!(k, ["unknown-flags", "invalid-record"]);
    let (store, _) = repair_store(dev(&mem), check_store(&dev(&mem)).unwrap()).unwrap();
    assert_eq!(store.blob_meta(a).unwrap().flags, blobstore::FLAG_THIN);
    assert_clean(&store);
    drop(store);
    assert!(kinds(&mem).is_empty());
}

#[test]
fn one_damaged_superblock_copy_is_rewritten() {
    let (mem, a, _) = image();
    let c = check_store(&dev(&mem)).unwrap();
    let active = c.active.unwrap();
    // Damage the older copy.
    mem.poke((1 - active as u64) * 4096 + 100, &[0xEE; 4]);
    assert_eq!(kinds(&mem), ["superblock-copy-bad"]);
    let (store, done) = repair_store(dev(&mem), check_store(&dev(&mem)).unwrap()).unwrap();
    assert!(!done.is_empty());
    assert!(store
        .blob_meta(a)
        .unwrap()
        .internal
        .contains_key(&b"later"[..]));
    drop(store);
    let c = check_store(&dev(&mem)).unwrap();
    assert!(c.is_clean(), "{:?}", c.findings);
    assert!(c.superblocks.iter().all(|s| s.is_ok()));
}

#[test]
fn damaged_checkpoint_is_not_repairable_and_left_untouched() {
    let (mem, _, _) = image();
    let store = Blobstore::open(dev(&mem), opts()).unwrap();
    let snap = store.metadata_layout().snapshot_segment;
    drop(store);
    mem.poke(snap.0 * CS + 60, &[0x55; 8]);
    let before = dump(&mem);
    let c = check_store(&dev(&mem)).unwrap();
    assert_eq!(
        c.findings.iter().map(|f| f.kind).collect::<Vec<_>>(),
        ["checkpoint-damaged"]
    );
    assert!(!c.repairable());
    assert!(repair_store(dev(&mem), c).is_err());
    assert_eq!(dump(&mem), before, "a refused repair wrote to the device");
}

#[test]
fn committed_groups_cut_off_by_damage_are_reported() {
    let (mem, a, _) = image();
    let store = Blobstore::open(dev(&mem), opts()).unwrap();
    let seg = store.metadata_layout().tail.0;
    let blob = store.open_blob(a).unwrap();
    for i in 0..6u8 {
        blob.set_xattr(&[b'n', i], &[i; 10]).unwrap();
        store.sync().unwrap();
    }
    let (tseg, toff) = store.metadata_layout().tail;
    assert_eq!(tseg, seg);
    drop(blob);
    drop(store);
    // Damage a block in the middle of the log (each sync above wrote one 512-byte block).
    let victim = seg.0 * CS + toff - 4 * 512 + 50;
    mem.poke(victim, &[0xAB; 4]);
    let c = check_store(&dev(&mem)).unwrap();
    assert!(
        c.findings.iter().any(|f| f.kind == "log-damaged"),
        "{:?}",
        c.findings
    );
    let (store, _) = repair_store(dev(&mem), c).unwrap();
    assert_clean(&store);
    drop(store);
    assert!(kinds(&mem).is_empty());
}

#[test]
fn torn_tail_of_a_crash_is_not_damage() {
    use driver::fault::{CountMode, FaultDevice, FaultPlan};
    let (mem, a, _) = image();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(5);
    let mut torn = 0;
    // Cut the power inside a commit that spans many log blocks, at every command.
    for cut in 0..12 {
        let m2 = mem.duplicate();
        let plan = FaultPlan::new(CountMode::Mutating, cut);
        plan.crash_after(cut);
        let m3 = m2.clone();
        plan.on_crash(move || m3.kill());
        let fdev: Arc<dyn Device> = Arc::new(FaultDevice::new(dev(&m2), Arc::clone(&plan)));
        let store = Blobstore::open(fdev, opts()).unwrap();
        let blob = store.open_blob(a).unwrap();
        let _ = blob.set_xattr(b"big", &[4u8; 30_000]);
        let _ = blob.set_xattr(b"big2", &[5u8; 30_000]);
        let _ = store.sync();
        drop(blob);
        drop(store);
        for i in 0..10 {
            let policy = if i == 0 {
                driver::mem::CutPolicy::KeepAll
            } else {
                driver::mem::CutPolicy::Random
            };
            let img = m2.power_cut(policy, &mut rng);
            let c = check_store(&dev(&img)).unwrap();
            assert!(c.is_clean(), "cut {cut}: {:?}", c.findings);
            let st = Blobstore::open(dev(&img), opts()).unwrap();
            if st.tail().reason != "end of log" {
                torn += 1;
            }
        }
    }
    assert!(torn > 0, "no cut landed inside the commit");
}

fn dump(m: &MemDevice) -> Vec<u8> {
    let mut out = vec![0u8; 8 << 20];
    m.peek(0, &mut out);
    out
}
