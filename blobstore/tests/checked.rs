//! Checked commits: a group carrying `DataCheck`s of the data it depends on is written with
//! no data pre-flush, then flushed once. Replay verifies the checks of the log's last group
//! only, and discards that group if its data did not land.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use blobstore::format::record::{data_crc, Record};
use blobstore::format::superblock::{Superblock, INCOMPAT_DATA_CHECKS, SB_SIZE};
use blobstore::{BlobId, BlobOptions, Blobstore, FormatOptions, OpenOptions, XattrNs};
use driver::fault::{CountMode, FaultDevice, FaultPlan, OpKind};
use driver::mem::{CutPolicy, MemDevice, MemOptions};
use driver::Device;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::Arc;
use support::{assert_clean, pattern};

const CS: u32 = 16 * 1024;
const KEY: &[u8] = b"size";

fn opts() -> OpenOptions {
    OpenOptions {
        background_checkpoint: false,
        checkpoint_bytes: Some(1 << 20),
        ..OpenOptions::default()
    }
}

fn mem_store() -> (MemDevice, Blobstore) {
    let mem = MemDevice::new(MemOptions {
        capacity: 8 << 20,
        lba_size: 512,
        ..MemOptions::default()
    })
    .unwrap();
    let store = Blobstore::create(
        Arc::new(mem.clone()),
        &FormatOptions {
            cluster_size: CS,
            ..FormatOptions::default()
        },
        opts(),
    )
    .unwrap();
    (mem, store)
}

/// A store on a fault device over `mem`, and the plan.
fn fault_store(mem: &MemDevice) -> (Blobstore, Arc<FaultPlan>) {
    let plan = FaultPlan::new(CountMode::Mutating, 1);
    let dev = Arc::new(FaultDevice::new(Arc::new(mem.clone()), Arc::clone(&plan)));
    (Blobstore::open(dev, opts()).unwrap(), plan)
}

fn size_of(store: &Blobstore, id: BlobId) -> Option<u64> {
    store
        .blob_meta(id)
        .unwrap()
        .internal
        .get(KEY)
        .map(|v| u64::from_le_bytes(v.as_slice().try_into().unwrap()))
}

/// Byte offset on the device of byte `off` of blob `id`.
fn device_offset(store: &Blobstore, id: BlobId, off: u64) -> u64 {
    let m = store.blob_meta(id).unwrap();
    let c = m.clusters[(off / u64::from(CS)) as usize];
    assert!(c.is_some());
    c.0 * u64::from(CS) + off % u64::from(CS)
}

/// Writes `data` at `off` and commits size = off + len with a check over it (not synced).
fn checked_append(store: &Blobstore, id: BlobId, off: u64, data: &[u8]) {
    let blob = store.open_blob(id).unwrap();
    let mut ch = store.channel().unwrap();
    blob.write(&mut ch, off, data).unwrap();
    let end = off + data.len() as u64;
    blob.set_xattr_ns_checked(
        XattrNs::Internal,
        KEY,
        &end.to_le_bytes(),
        &[(off, data.len() as u64, data_crc(data))],
    )
    .unwrap();
}

fn reopen(img: MemDevice, read_only: bool) -> Blobstore {
    Blobstore::open(
        Arc::new(img),
        OpenOptions {
            read_only,
            ..opts()
        },
    )
    .unwrap()
}

/// A store with one thick blob holding an acknowledged size of 4096, then a checked append
/// of 4096 more bytes whose commit fails at its flush (the group and the data were both
/// written, neither flushed). Returns the memory device, the blob, the device offset of
/// the appended bytes, the bytes, and the log tail before the failed commit.
fn crash_in_checked_commit() -> (MemDevice, BlobId, u64, Vec<u8>, (u64, u64)) {
    let (mem, store) = mem_store();
    let id = store
        .create_blob(BlobOptions {
            thin: false,
            clusters: 2,
            ..Default::default()
        })
        .unwrap();
    store.sync().unwrap();
    drop(store);
    let (store, plan) = fault_store(&mem);
    let first = pattern(1, 0, 4096);
    checked_append(&store, id, 0, &first);
    store.sync().unwrap();
    let layout = store.metadata_layout();
    let tail = (layout.tail.0 .0, layout.tail.1);
    let data = pattern(2, 4096, 4096);
    checked_append(&store, id, 4096, &data);
    let at = device_offset(&store, id, 4096);
    plan.fail(OpKind::Flush, 0, 1_000_000);
    assert!(store.sync().is_err());
    assert!(store.is_read_only());
    drop(store);
    (mem, id, at, data, tail)
}

/// The last group is checked and its data landed: it is applied (after verifying).
#[test]
fn checked_last_group_with_its_data_applies() {
    let (mem, id, _, data, _) = crash_in_checked_commit();
    let img = mem.power_cut(CutPolicy::KeepAll, &mut StdRng::seed_from_u64(1));
    let fsck = blobstore::fsck::check_store(&(Arc::new(img.clone()) as Arc<dyn Device>)).unwrap();
    assert!(fsck.is_clean(), "{:?}", fsck.findings);
    let store = reopen(img, false);
    let replay = store.info().replay;
    assert_eq!(replay.discarded_checked_groups, 0);
    assert_eq!(
        replay.check_bytes_read, 4096,
        "the last group's check was read"
    );
    assert_eq!(size_of(&store, id), Some(8192));
    let mut got = vec![0u8; 4096];
    store
        .open_blob(id)
        .unwrap()
        .read(&mut store.channel().unwrap(), 4096, &mut got)
        .unwrap();
    assert_eq!(got, data);
    assert_clean(&store);
}

/// The last group is checked but its data never landed: it is discarded as if torn, the
/// next group is written where it was, and everything reloads.
#[test]
fn checked_last_group_without_its_data_is_discarded_and_overwritten() {
    let (mem, id, at, _, tail_before) = crash_in_checked_commit();
    let img = mem.power_cut(CutPolicy::KeepAll, &mut StdRng::seed_from_u64(1));
    // The data write was dropped by the power cut (the log write survived).
    img.poke(at, &[0u8; 4096]);

    // fsck (lenient replay) discards it too, and sees nothing wrong.
    let fsck = blobstore::fsck::check_store(&(Arc::new(img.clone()) as Arc<dyn Device>)).unwrap();
    assert!(fsck.is_clean(), "{:?}", fsck.findings);
    let r = fsck.replayed.as_ref().unwrap();
    assert_eq!(r.stats.discarded_checked_groups, 1);
    assert!(
        r.tail.reason.contains("data checks failed"),
        "{}",
        r.tail.reason
    );

    // A read-only open: the acknowledged state, the log ending where the group began.
    let ro = reopen(img.duplicate(), true);
    assert_eq!(size_of(&ro, id), Some(4096));
    let tail = ro.tail().clone();
    assert!(
        tail.reason
            .starts_with("last group's data checks failed: discarded"),
        "{}",
        tail.reason
    );
    assert_eq!((tail.seg.0, tail.off), tail_before);
    let layout = ro.metadata_layout();
    assert_eq!((layout.tail.0 .0, layout.tail.1), tail_before);
    let replay = ro.info().replay;
    assert_eq!(replay.discarded_checked_groups, 1);
    assert!(replay.discarded_blocks >= 1);
    assert_eq!(replay.check_bytes_read, 4096);
    drop(ro);

    // A read-write open seals the spot at once (an empty group over the discarded one).
    let store = reopen(img.clone(), false);
    assert_eq!(size_of(&store, id), Some(4096));
    assert_eq!(store.groups_committed(), 1);
    let layout = store.metadata_layout();
    assert_eq!(layout.tail.0 .0, tail_before.0);
    assert_eq!(
        layout.tail.1,
        tail_before.1 + 512,
        "one empty block where it was"
    );
    assert_clean(&store);
    // New commits go on from there and reload fine.
    let more = pattern(3, 4096, 4096);
    checked_append(&store, id, 4096, &more);
    store.sync().unwrap();
    store
        .open_blob(id)
        .unwrap()
        .set_xattr(b"after", b"1")
        .unwrap();
    store.sync().unwrap();
    drop(store);
    let img2 = img.power_cut(CutPolicy::DropAll, &mut StdRng::seed_from_u64(2));
    let store = reopen(img2, false);
    let replay = store.info().replay;
    assert_eq!(replay.discarded_checked_groups, 0);
    assert_eq!(store.tail().reason, "end of log");
    assert_eq!(size_of(&store, id), Some(8192));
    assert_eq!(
        store.blob_meta(id).unwrap().xattrs[&b"after"[..]],
        b"1".to_vec()
    );
    let mut got = vec![0u8; 4096];
    store
        .open_blob(id)
        .unwrap()
        .read(&mut store.channel().unwrap(), 4096, &mut got)
        .unwrap();
    assert_eq!(got, more);
    assert_clean(&store);
}

/// A discarded group must not come back: once a read-write open dropped it, writing the
/// very bytes it checked (and flushing them) must not make it verify at the next load.
#[test]
fn discarded_checked_group_never_comes_back() {
    let (mem, id, at, data, _) = crash_in_checked_commit();
    let img = mem.power_cut(CutPolicy::KeepAll, &mut StdRng::seed_from_u64(1));
    img.poke(at, &[0u8; 4096]);
    let store = reopen(img.clone(), false);
    assert_eq!(size_of(&store, id), Some(4096));
    // The application writes the same bytes again and flushes them, without a commit.
    store
        .open_blob(id)
        .unwrap()
        .write(&mut store.channel().unwrap(), 4096, &data)
        .unwrap();
    store.sync().unwrap();
    drop(store);
    let img = img.power_cut(CutPolicy::DropAll, &mut StdRng::seed_from_u64(3));
    let store = reopen(img, false);
    assert_eq!(
        size_of(&store, id),
        Some(4096),
        "the discarded group came back"
    );
    assert_clean(&store);
}

/// A checked group followed by another complete group is never verified: its data may be
/// overwritten once a later group is durable (after `confirm`, or any other commit).
#[test]
fn confirmed_checked_group_is_never_verified() {
    for how in ["confirm", "commit", "none"] {
        let (mem, store) = mem_store();
        let id = store
            .create_blob(BlobOptions {
                thin: false,
                clusters: 1,
                ..Default::default()
            })
            .unwrap();
        store.sync().unwrap();
        let data = pattern(7, 0, 2048);
        checked_append(&store, id, 0, &data);
        store.sync().unwrap();
        let g = store.groups_committed();
        match how {
            "confirm" => {
                store.confirm().unwrap();
                assert_eq!(store.groups_committed(), g + 1);
            }
            "commit" => {
                store.open_blob(id).unwrap().set_xattr(b"x", b"y").unwrap();
                store.sync().unwrap();
                assert_eq!(store.groups_committed(), g + 1);
            }
            _ => assert_eq!(store.groups_committed(), g),
        }
        // Overwrite the checked bytes, durably.
        store
            .open_blob(id)
            .unwrap()
            .write(&mut store.channel().unwrap(), 0, &pattern(8, 0, 2048))
            .unwrap();
        store.sync().unwrap();
        drop(store);
        let store = reopen(
            mem.power_cut(CutPolicy::DropAll, &mut StdRng::seed_from_u64(4)),
            true,
        );
        let replay = store.info().replay;
        if how == "none" {
            // The contract was broken on purpose: the group is still the last one, so its
            // (acknowledged!) change is discarded. This is what `confirm` is for.
            assert_eq!(size_of(&store, id), None, "{how}");
            assert_eq!(replay.discarded_checked_groups, 1, "{how}");
        } else {
            assert_eq!(size_of(&store, id), Some(2048), "{how}");
            assert_eq!(replay.discarded_checked_groups, 0, "{how}");
            assert_eq!(
                replay.check_bytes_read, 0,
                "{how}: a confirmed group was verified"
            );
        }
    }
}

/// Checks map blob offsets through the cluster map: unallocated clusters read as zeroes.
/// (No crash needed: a load verifies whatever checked group is last.)
#[test]
fn checks_of_unallocated_ranges_read_zeroes() {
    for (crc, kept) in [
        (data_crc(&[0u8; 3000]), true),
        (data_crc(&[1u8; 3000]), false),
    ] {
        let (mem, store) = mem_store();
        let id = store
            .create_blob(BlobOptions {
                thin: true,
                clusters: 3,
                ..Default::default()
            })
            .unwrap();
        store.sync().unwrap();
        // Straddling the end of cluster 0 into cluster 1, neither allocated.
        let blob = store.open_blob(id).unwrap();
        blob.set_xattr_ns_checked(
            XattrNs::Internal,
            KEY,
            &1u64.to_le_bytes(),
            &[(u64::from(CS) - 1000, 3000, crc)],
        )
        .unwrap();
        drop(blob);
        store.sync().unwrap();
        drop(store);
        let store = reopen(mem.duplicate(), true);
        assert_eq!(size_of(&store, id).is_some(), kept);
        assert_eq!(store.info().replay.check_bytes_read, 0);
    }
}

/// Partly allocated: the check reads the allocated part, zeroes for the rest, unaligned.
#[test]
fn checks_across_allocated_and_unallocated_clusters() {
    let (mem, store) = mem_store();
    let id = store
        .create_blob(BlobOptions {
            thin: true,
            clusters: 3,
            ..Default::default()
        })
        .unwrap();
    let blob = store.open_blob(id).unwrap();
    let mut ch = store.channel().unwrap();
    let data = pattern(9, 0, CS as usize);
    blob.write(&mut ch, 0, &data).unwrap();
    store.sync().unwrap();
    // Bytes 16000..16384 of cluster 0 (allocated) then 2000 zeroes of cluster 1.
    let mut want = data[16000..].to_vec();
    want.extend_from_slice(&[0u8; 2000]);
    let off = 16000u64;
    blob.set_xattr_ns_checked(
        XattrNs::Internal,
        KEY,
        b"v",
        &[
            (off, want.len() as u64, data_crc(&want)),
            (3, 0, 0),
            (5, 7, data_crc(&data[5..12])),
        ],
    )
    .unwrap();
    store.sync().unwrap();
    drop((blob, store));
    let store = reopen(mem.duplicate(), true);
    assert!(size_of_raw(&store, id).is_some());
    let replay = store.info().replay;
    assert_eq!(replay.discarded_checked_groups, 0);
    // 16000..16384 rounds out to 15872..16384, 5..12 to 0..512.
    assert_eq!(replay.check_bytes_read, 512 + 512);
}

fn size_of_raw(store: &Blobstore, id: BlobId) -> Option<Vec<u8>> {
    store.blob_meta(id).unwrap().internal.get(KEY).cloned()
}

/// Bad checks are refused before anything is queued.
#[test]
fn checks_outside_the_blob_are_refused() {
    let (_mem, store) = mem_store();
    let id = store
        .create_blob(BlobOptions {
            thin: true,
            clusters: 1,
            ..Default::default()
        })
        .unwrap();
    let blob = store.open_blob(id).unwrap();
    for (off, len) in [(0, u64::from(CS) + 1), (u64::from(CS), 1), (u64::MAX, 2)] {
        assert!(blob
            .set_xattr_ns_checked(XattrNs::Internal, KEY, b"v", &[(off, len, 0)])
            .is_err());
    }
    assert_eq!(size_of_raw(&store, id), None);
    store.sync().unwrap();
    assert_clean(&store);
}

/// The point of it all: N checked append+sync rounds cost about N device flushes; the
/// ordered path (the same with `set_xattr_ns`) about 2N.
#[test]
fn checked_appends_cost_one_flush_each() {
    let rounds = 100u64;
    let mut figures = Vec::new();
    for checked in [true, false] {
        let (mem, store) = mem_store();
        let id = store
            .create_blob(BlobOptions {
                thin: false,
                clusters: 32,
                ..Default::default()
            })
            .unwrap();
        store.sync().unwrap();
        let blob = store.open_blob(id).unwrap();
        let mut ch = store.channel().unwrap();
        mem.reset_stats();
        for i in 0..rounds {
            let data = pattern(i, i * 4096, 4096);
            blob.write(&mut ch, i * 4096, &data).unwrap();
            let size = ((i + 1) * 4096).to_le_bytes();
            if checked {
                blob.set_xattr_ns_checked(
                    XattrNs::Internal,
                    KEY,
                    &size,
                    &[(i * 4096, 4096, data_crc(&data))],
                )
                .unwrap();
            } else {
                blob.set_xattr_ns(XattrNs::Internal, KEY, &size).unwrap();
            }
            store.sync().unwrap();
        }
        let st = mem.stats();
        figures.push(st.flushes);
        eprintln!(
            "flush count: {} path, {rounds} append+sync rounds: {} flushes, {} writes",
            if checked { "checked" } else { "ordered" },
            st.flushes,
            st.writes
        );
        assert_eq!(size_of(&store, id), Some(rounds * 4096));
        assert_clean(&store);
    }
    println!(
        "flush-count: rounds={rounds} checked={} ordered={}",
        figures[0], figures[1]
    );
    assert_eq!(figures[0], rounds, "checked: one flush per round");
    assert_eq!(figures[1], 2 * rounds, "ordered: two flushes per round");
}

/// An ordered change queued with checked ones makes the whole group ordered (pre-flush,
/// no checked flag): two flushes.
#[test]
fn ordered_records_make_the_group_ordered() {
    let (mem, store) = mem_store();
    let id = store
        .create_blob(BlobOptions {
            thin: false,
            clusters: 1,
            ..Default::default()
        })
        .unwrap();
    store.sync().unwrap();
    mem.reset_stats();
    checked_append(&store, id, 0, &pattern(1, 0, 512));
    store.open_blob(id).unwrap().set_xattr(b"o", b"1").unwrap();
    store.sync().unwrap();
    assert_eq!(mem.stats().flushes, 2);
    // A checked change alone, but with an allocating write queued (its MapRun is ordered).
    let thin = store
        .create_blob(BlobOptions {
            thin: true,
            clusters: 1,
            ..Default::default()
        })
        .unwrap();
    store.sync().unwrap();
    mem.reset_stats();
    checked_append(&store, thin, 0, &pattern(2, 0, 512));
    store.sync().unwrap();
    assert_eq!(mem.stats().flushes, 2);
    // Then appends into the allocated cluster are checked.
    mem.reset_stats();
    checked_append(&store, thin, 512, &pattern(3, 512, 512));
    store.sync().unwrap();
    assert_eq!(mem.stats().flushes, 1);
    assert_clean(&store);
}

/// `confirm` writes a group even with nothing queued; a sync with nothing queued does not.
#[test]
fn confirm_forces_a_group() {
    let (mem, store) = mem_store();
    assert_eq!(store.groups_committed(), 0);
    mem.reset_stats();
    store.sync().unwrap();
    assert_eq!(store.groups_committed(), 0);
    assert_eq!(mem.stats().writes, 0);
    let before = store.metadata_layout().tail;
    store.confirm().unwrap();
    assert_eq!(store.groups_committed(), 1);
    let st = mem.stats();
    assert_eq!((st.writes, st.flushes), (1, 1));
    assert_eq!(store.metadata_layout().tail.1, before.1 + 512);
    store.checkpoint().unwrap();
    assert_eq!(store.groups_committed(), 2);
    assert_clean(&store);
    drop(store);
    let store = reopen(mem.duplicate(), false);
    assert_eq!(store.groups_committed(), 0);
    assert_clean(&store);
    // Concurrent confirms share groups and all return.
    std::thread::scope(|s| {
        for _ in 0..4 {
            let store = store.clone();
            s.spawn(move || {
                for _ in 0..20 {
                    let g = store.groups_committed();
                    store.confirm().unwrap();
                    assert!(store.groups_committed() > g);
                }
            });
        }
    });
    assert_clean(&store);
    let ro = reopen(mem.duplicate(), true);
    assert!(ro.confirm().is_err());
}

/// A checked group whose blocks jump to a new log segment: discarding it gives the new
/// segment back, and the allocation stays consistent.
#[test]
fn discarded_checked_group_across_a_segment_jump() {
    let (mem, store) = mem_store();
    let id = store
        .create_blob(BlobOptions {
            thin: false,
            clusters: 1,
            ..Default::default()
        })
        .unwrap();
    store.sync().unwrap();
    // Fill the first log segment until a 9 KiB group no longer fits.
    let blob = store.open_blob(id).unwrap();
    while store.metadata_layout().tail.1 < u64::from(CS) - 6000 {
        blob.set_xattr(b"fill", &[1u8; 300]).unwrap();
        store.sync().unwrap();
    }
    drop(blob);
    let segments = store.metadata_layout().log_segments.len();
    drop(store);
    let (store, plan) = fault_store(&mem);
    let tail = store.metadata_layout().tail;
    let blob = store.open_blob(id).unwrap();
    let data = pattern(5, 0, 4096);
    blob.write(&mut store.channel().unwrap(), 0, &data).unwrap();
    let at = device_offset(&store, id, 0);
    blob.set_xattr_ns_checked(
        XattrNs::Internal,
        KEY,
        &[7u8; 9000],
        &[(0, 4096, data_crc(&data))],
    )
    .unwrap();
    plan.fail(OpKind::Flush, 0, 1_000_000);
    assert!(store.sync().is_err());
    drop((blob, store));
    let img = mem.power_cut(CutPolicy::KeepAll, &mut StdRng::seed_from_u64(1));
    img.poke(at, &[0u8; 4096]);
    // The group did go into a second segment.
    {
        let keep = reopen(
            mem.power_cut(CutPolicy::KeepAll, &mut StdRng::seed_from_u64(1)),
            true,
        );
        assert_eq!(keep.metadata_layout().log_segments.len(), segments + 1);
    }
    let store = reopen(img.clone(), true);
    assert_eq!(store.metadata_layout().log_segments.len(), segments);
    assert_eq!(store.metadata_layout().tail, tail);
    assert_eq!(store.info().replay.discarded_checked_groups, 1);
    assert!(size_of_raw(&store, id).is_none());
    assert_clean(&store);
    drop(store);
    let store = reopen(img, false);
    assert_clean(&store);
    store
        .open_blob(id)
        .unwrap()
        .set_xattr(b"z", &[2u8; 9000])
        .unwrap();
    store.sync().unwrap();
    assert_clean(&store);
}

/// An image without the feature bit (made before it existed) opens, and checked changes
/// fall back to the ordered path: no DataCheck records, no checked groups, two flushes.
#[test]
fn store_without_the_feature_uses_the_ordered_path() {
    let (mem, store) = mem_store();
    assert!(store.supports_data_checks());
    let id = store
        .create_blob(BlobOptions {
            thin: false,
            clusters: 1,
            ..Default::default()
        })
        .unwrap();
    store.checkpoint().unwrap();
    drop(store);
    // Clear the bit in the active superblock copy (the highest generation).
    let mut pages = vec![0u8; 2 * SB_SIZE];
    mem.peek(0, &mut pages);
    let (slot, mut sb) = [0usize, 1]
        .into_iter()
        .filter_map(|i| {
            Superblock::decode(&pages[i * SB_SIZE..(i + 1) * SB_SIZE])
                .ok()
                .map(|s| (i, s))
        })
        .max_by_key(|(_, s)| s.generation)
        .unwrap();
    assert_eq!(sb.incompat & INCOMPAT_DATA_CHECKS, INCOMPAT_DATA_CHECKS);
    sb.incompat &= !INCOMPAT_DATA_CHECKS;
    mem.poke((slot * SB_SIZE) as u64, &sb.encode());

    let store = reopen(mem.clone(), false);
    assert!(!store.supports_data_checks());
    mem.reset_stats();
    checked_append(&store, id, 0, &pattern(1, 0, 1024));
    store.sync().unwrap();
    assert_eq!(mem.stats().flushes, 2);
    store.confirm().unwrap();
    assert_clean(&store);
    drop(store);
    let mut qp = mem.open_qpair(8).unwrap();
    let sb = blobstore::recovery::read_superblocks(qp.as_mut(), &mem)
        .unwrap()
        .active;
    assert_eq!(sb.incompat & INCOMPAT_DATA_CHECKS, 0, "the bit stays off");
    let r = blobstore::recovery::replay(qp.as_mut(), &mem, &sb, true).unwrap();
    let groups = r.groups.unwrap();
    assert!(!groups
        .iter()
        .flatten()
        .any(|r| matches!(r, Record::DataCheck { .. })));
    assert_eq!(groups.last().unwrap().len(), 0, "confirm's empty group");
    assert_eq!(
        size_of_raw(&reopen(mem.duplicate(), true), id),
        Some(1024u64.to_le_bytes().to_vec())
    );
}

/// A checkpoint's snapshot holds no DataCheck (and is never verified).
#[test]
fn checkpoints_keep_no_checks() {
    let (mem, store) = mem_store();
    let id = store
        .create_blob(BlobOptions {
            thin: false,
            clusters: 4,
            ..Default::default()
        })
        .unwrap();
    store.sync().unwrap();
    for i in 0..8u64 {
        checked_append(&store, id, i * 512, &pattern(i, i * 512, 512));
        store.sync().unwrap();
    }
    store.checkpoint().unwrap();
    drop(store);
    let mut qp = mem.open_qpair(8).unwrap();
    let sb = blobstore::recovery::read_superblocks(qp.as_mut(), &mem)
        .unwrap()
        .active;
    let r = blobstore::recovery::replay(qp.as_mut(), &mem, &sb, true).unwrap();
    let groups = r.groups.unwrap();
    assert_eq!(groups.len(), 1);
    assert!(!groups[0]
        .iter()
        .any(|r| matches!(r, Record::DataCheck { .. })));
    assert_eq!(
        r.table.export()[&id].internal[KEY],
        4096u64.to_le_bytes().to_vec()
    );
}

/// Walks the live log: for each group after the snapshot, whether it is checked.
fn group_flags(mem: &MemDevice) -> Vec<bool> {
    use blobstore::format::block::{chain_seed, decode_block, BlockHeader, KIND_JUMP};
    let mut qp = mem.open_qpair(8).unwrap();
    let sb = blobstore::recovery::read_superblocks(qp.as_mut(), mem)
        .unwrap()
        .active;
    let cs = u64::from(sb.cluster_size);
    let read = |seg: u64| {
        let mut b = vec![0u8; cs as usize];
        mem.peek(seg * cs, &mut b);
        b
    };
    let (mut buf, mut off, mut seq, mut prev) = (
        read(sb.log_start),
        0usize,
        sb.log_start_seq,
        chain_seed(sb.log_epoch),
    );
    let mut out = Vec::new();
    let mut checked = false;
    let mut first = true;
    while let Ok((h, p, crc)) = decode_block(&buf[off..], sb.log_epoch, seq, prev) {
        seq += 1;
        prev = crc;
        if h.kind == KIND_JUMP {
            buf = read(h.jump_to);
            off = 0;
            continue;
        }
        off += BlockHeader::padded_len(p.len(), sb.log_unit as usize);
        checked |= h.checked();
        if !h.continues() {
            if !first {
                out.push(checked);
            }
            first = false;
            checked = false;
        }
    }
    out
}

/// A background checkpoint copies the groups committed while it wrote its snapshot into the
/// new log without the checked flag: their commits completed, and their data may change.
#[test]
fn background_checkpoint_copies_are_not_checked() {
    let mem = MemDevice::new(MemOptions {
        capacity: 8 << 20,
        lba_size: 512,
        // Slow flushes: commits go on while the checkpointer waits for its own.
        flush_delay: std::time::Duration::from_micros(300),
        ..MemOptions::default()
    })
    .unwrap();
    let store = Blobstore::create(
        Arc::new(mem.clone()),
        &FormatOptions {
            cluster_size: CS,
            ..FormatOptions::default()
        },
        OpenOptions {
            background_checkpoint: true,
            checkpoint_bytes: Some(4 * u64::from(CS)),
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let id = store
        .create_blob(BlobOptions {
            thin: false,
            clusters: 256,
            ..Default::default()
        })
        .unwrap();
    store.sync().unwrap();
    // Every append goes to new bytes: no checked byte is ever changed, no confirm needed,
    // so every group this test commits is checked.
    let mut next = 0u64;
    let mut copies_seen = 0;
    for _attempt in 0..10 {
        let start = store.info().checkpoint_count;
        let mut after = None;
        loop {
            assert!(next < 256 * u64::from(CS));
            checked_append(&store, id, next, &pattern(next, next, 512));
            store.sync().unwrap();
            next += 512;
            if after.is_none() && store.info().checkpoint_count > start {
                after = Some(next);
            }
            if after.is_some_and(|a| next >= a + 3 * 512) {
                break;
            }
        }
        store.wait_background();
        let flags = group_flags(&mem);
        // Snapshot, then the copies (not checked), then this log's own commits (checked).
        let copies = flags.iter().take_while(|c| !**c).count();
        assert!(flags[copies..].iter().all(|c| *c), "{flags:?}");
        assert!(flags.len() - copies >= 3, "{flags:?}");
        copies_seen += copies;
        if copies_seen >= 4 {
            break;
        }
    }
    assert!(
        copies_seen >= 4,
        "no background checkpoint had groups to copy"
    );
    drop(store);
    let store = reopen(mem.duplicate(), true);
    assert_eq!(size_of(&store, id), Some(next));
    assert_clean(&store);
}

/// A thick blob of `clusters` clusters with an acknowledged empty size, on a fresh store.
fn thick_blob(clusters: u64) -> (MemDevice, Blobstore, BlobId) {
    let (mem, store) = mem_store();
    let id = store
        .create_blob(BlobOptions {
            thin: false,
            clusters,
            ..Default::default()
        })
        .unwrap();
    store.sync().unwrap();
    (mem, store, id)
}

/// `sync_overlapped`: the data writes are still queued on the channel when the group is
/// written (the memory device runs a queue pair's commands only when it is polled), and
/// the hook reaps them before the one Flush, so a power cut dropping everything unflushed
/// afterwards loses nothing.
#[test]
fn overlapped_sync_makes_data_and_group_durable_with_one_flush() {
    let (mem, store, id) = thick_blob(8);
    let blob = store.open_blob(id).unwrap();
    let mut ch = store.channel().unwrap();
    let rounds = 20u64;
    mem.reset_stats();
    for i in 0..rounds {
        let data = pattern(i, i * 4096, 4096);
        ch.submit_write(&blob, i * 4096, driver::DmaBuf::from_slice(&data), i)
            .map_err(|(e, _)| e)
            .unwrap();
        let mut waited = 0;
        store
            .sync_overlapped(
                || {
                    blob.set_xattr_ns_checked(
                        XattrNs::Internal,
                        KEY,
                        &((i + 1) * 4096).to_le_bytes(),
                        &[(i * 4096, 4096, data_crc(&data))],
                    )
                },
                || {
                    waited += 1;
                    let mut out = Vec::new();
                    while ch.in_flight() > 0 {
                        ch.wait(&mut out);
                    }
                    out.into_iter().try_for_each(|c| c.result)
                },
            )
            .unwrap();
        assert_eq!(waited, 1, "the hook runs exactly once");
    }
    assert_eq!(mem.stats().flushes, rounds, "one flush per overlapped sync");
    let img = mem.power_cut(CutPolicy::DropAll, &mut StdRng::seed_from_u64(7));
    let store = reopen(img, true);
    assert_eq!(size_of(&store, id), Some(rounds * 4096));
    let blob = store.open_blob(id).unwrap();
    let mut ch = store.channel().unwrap();
    let mut got = vec![0u8; (rounds * 4096) as usize];
    blob.read(&mut ch, 0, &mut got).unwrap();
    for i in 0..rounds {
        let a = (i * 4096) as usize;
        assert!(
            got[a..a + 4096] == pattern(i, i * 4096, 4096)[..],
            "round {i}"
        );
    }
    assert_clean(&store);
}

/// A failing hook (a data write error) after the group may be on the device: the store
/// turns read-only, the error comes back, and a reload does not trust the group's data
/// (the check fails, the group is discarded).
#[test]
fn overlapped_sync_with_failed_data_turns_read_only() {
    let (mem, store, id) = thick_blob(2);
    let blob = store.open_blob(id).unwrap();
    let data = pattern(9, 0, 4096);
    let r = store.sync_overlapped(
        || {
            blob.set_xattr_ns_checked(
                XattrNs::Internal,
                KEY,
                &4096u64.to_le_bytes(),
                &[(0, 4096, data_crc(&data))],
            )
        },
        || Err(blobstore::Error::Io(driver::Error::Injected("data write"))),
    );
    assert!(r.is_err());
    assert!(store.is_read_only());
    drop(store);
    let img = mem.power_cut(CutPolicy::KeepAll, &mut StdRng::seed_from_u64(1));
    let store = reopen(img, true);
    assert_eq!(
        size_of(&store, id),
        None,
        "a group whose data never came is dropped"
    );
}

/// When another thread's ordered record (a cluster mapping) is queued, the group is
/// ordered: the hook runs before the pre-flush and the data is durable before the group.
#[test]
fn overlapped_sync_waits_before_the_pre_flush_of_an_ordered_group() {
    let (mem, store, id) = thick_blob(2);
    let thin = store
        .create_blob(BlobOptions {
            thin: true,
            clusters: 1,
            ..Default::default()
        })
        .unwrap();
    store.sync().unwrap();
    let blob = store.open_blob(id).unwrap();
    let other = store.open_blob(thin).unwrap();
    let mut ch = store.channel().unwrap();
    // Allocates a cluster: an ordered mapping waits in the queue.
    other.write(&mut ch, 0, &[5u8; 4096]).unwrap();
    let data = pattern(3, 0, 4096);
    ch.submit_write(&blob, 0, driver::DmaBuf::from_slice(&data), 0)
        .map_err(|(e, _)| e)
        .unwrap();
    mem.reset_stats();
    let flushes_at_hook = std::cell::Cell::new(None);
    store
        .sync_overlapped(
            || {
                blob.set_xattr_ns_checked(
                    XattrNs::Internal,
                    KEY,
                    &4096u64.to_le_bytes(),
                    &[(0, 4096, data_crc(&data))],
                )
            },
            || {
                flushes_at_hook.set(Some(mem.stats().flushes));
                let mut out = Vec::new();
                while ch.in_flight() > 0 {
                    ch.wait(&mut out);
                }
                out.into_iter().try_for_each(|c| c.result)
            },
        )
        .unwrap();
    assert_eq!(flushes_at_hook.get(), Some(0), "hook before the pre-flush");
    assert_eq!(mem.stats().flushes, 2, "an ordered group: two flushes");
    let img = mem.power_cut(CutPolicy::DropAll, &mut StdRng::seed_from_u64(3));
    let store = reopen(img, true);
    assert_eq!(size_of(&store, id), Some(4096));
    assert_eq!(store.blob_meta(thin).unwrap().allocated(), 1);
    assert_clean(&store);
}

/// Checked-mapping mode: a cluster allocated by a write is mapped unordered only if the
/// commit carries checks over the whole cluster; with none, or a partial one, the commit is
/// ordered (two flushes). Either way a power cut afterwards keeps the data.
#[test]
fn checked_mapping_needs_checks_over_the_whole_cluster() {
    let cs = u64::from(CS);
    // (checks over the new cluster, flushes expected)
    let cases: [(&str, usize, u64); 3] = [("whole", 2, 1), ("none", 0, 2), ("partial", 1, 2)];
    for (label, parts, want_flushes) in cases {
        let (mem, store) = mem_store();
        let id = store
            .create_blob(BlobOptions {
                thin: true,
                clusters: 2,
                ..Default::default()
            })
            .unwrap();
        store.sync().unwrap();
        let blob = store.open_blob(id).unwrap();
        let mut ch = store.channel().unwrap();
        ch.set_checked_mapping(true);
        let data = pattern(4, cs, 4096);
        mem.reset_stats();
        // Into the second cluster, at 4 KiB in: zeroes before and after the data.
        blob.write(&mut ch, cs + 4096, &data).unwrap();
        let mut cluster = vec![0u8; cs as usize];
        cluster[4096..8192].copy_from_slice(&data);
        let half = cs / 2;
        let checks: Vec<(u64, u64, u32)> = match parts {
            2 => vec![
                (cs, half, data_crc(&cluster[..half as usize])),
                (cs + half, half, data_crc(&cluster[half as usize..])),
            ],
            1 => vec![(cs, half, data_crc(&cluster[..half as usize]))],
            _ => vec![],
        };
        blob.set_xattr_ns_checked(XattrNs::Internal, KEY, &8u64.to_le_bytes(), &checks)
            .unwrap();
        store.sync().unwrap();
        assert_eq!(mem.stats().flushes, want_flushes, "{label}");
        let img = mem.power_cut(CutPolicy::DropAll, &mut StdRng::seed_from_u64(5));
        let store = reopen(img, true);
        let blob = store.open_blob(id).unwrap();
        let mut got = vec![0u8; 4096];
        blob.read(&mut store.channel().unwrap(), cs + 4096, &mut got)
            .unwrap();
        assert!(got == data, "{label}: data lost");
        assert_clean(&store);
    }
}
