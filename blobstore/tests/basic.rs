//! Blobstore behaviour on both backends (in-memory and io_uring over a temp file).

mod support;

use blobstore::{BlobOptions, Blobstore, Error, OpenOptions, XattrNs};
use driver::fault::{CountMode, FaultDevice, FaultPlan, OpKind};
use driver::Device;
use std::sync::Arc;
use support::{assert_clean, pattern, TestDev};

const CS: u32 = 64 * 1024;

#[test]
fn write_sync_reopen_read() {
    for td in TestDev::all(32 << 20, 4096) {
        let store = td.format(CS);
        let id = store
            .create_blob(BlobOptions {
                thin: true,
                clusters: 4,
                ..Default::default()
            })
            .unwrap();
        let blob = store.open_blob(id).unwrap();
        let mut ch = store.channel().unwrap();
        let data = pattern(1, 0, 3 * CS as usize);
        // Unaligned to clusters: starts half-way into cluster 0, spans into cluster 3.
        blob.write(&mut ch, 8192, &data).unwrap();
        assert_eq!(blob.allocated_clusters(), 4);
        blob.set_xattr(b"name", b"value").unwrap();
        blob.sync().unwrap();
        drop(blob);
        drop(ch);
        store.close().unwrap();

        let store = td.open();
        assert_clean(&store);
        let blob = store.open_blob(id).unwrap();
        let mut ch = store.channel().unwrap();
        let mut out = vec![0u8; 4 * CS as usize];
        blob.read(&mut ch, 0, &mut out).unwrap();
        assert!(
            out[..8192].iter().all(|&b| b == 0),
            "{}: zero fill before",
            td.name
        );
        assert_eq!(&out[8192..8192 + data.len()], &data[..], "{}", td.name);
        assert!(out[8192 + data.len()..].iter().all(|&b| b == 0));
        assert_eq!(blob.get_xattr(b"name").as_deref(), Some(&b"value"[..]));
        assert!(blob.is_thin());
    }
}

#[test]
fn unsynced_changes_are_lost_on_dirty_reload_synced_kept() {
    let td = TestDev::mem(16 << 20, 512);
    let store = td.format(CS);
    let a = store.create_blob(BlobOptions::default()).unwrap();
    store.sync().unwrap();
    let b = store.create_blob(BlobOptions::default()).unwrap();
    // Crash: drop everything unflushed.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
    let img = td
        .mem
        .as_ref()
        .unwrap()
        .power_cut(driver::mem::CutPolicy::DropAll, &mut rng);
    drop(store);
    let store = Blobstore::open(Arc::new(img), OpenOptions::default()).unwrap();
    assert_eq!(store.blob_ids(), vec![a]);
    assert!(!store.blob_ids().contains(&b));
    assert_clean(&store);
}

#[test]
fn thick_blobs_resize_and_free_space() {
    for td in TestDev::all(16 << 20, 4096) {
        // Exact cluster accounting: no background checkpoint moving log segments meanwhile.
        let store = Blobstore::create(
            Arc::clone(&td.dev),
            &blobstore::FormatOptions {
                cluster_size: CS,
                ..Default::default()
            },
            OpenOptions {
                background_checkpoint: false,
                ..Default::default()
            },
        )
        .unwrap();
        let free0 = store.info().free_clusters;
        let id = store
            .create_blob(BlobOptions {
                thin: false,
                clusters: 10,
                ..Default::default()
            })
            .unwrap();
        let blob = store.open_blob(id).unwrap();
        assert_eq!(blob.allocated_clusters(), 10);
        let mut ch = store.channel().unwrap();
        let mut out = vec![1u8; CS as usize];
        blob.read(&mut ch, 0, &mut out).unwrap();
        assert!(out.iter().all(|&b| b == 0), "thick clusters read as zeroes");
        blob.resize(20).unwrap();
        assert_eq!(blob.allocated_clusters(), 20);
        blob.resize(5).unwrap();
        assert_eq!(blob.allocated_clusters(), 5);
        // Freed clusters come back only after the shrink is durable.
        let before = store.info().free_clusters;
        store.sync().unwrap();
        let after = store.info().free_clusters;
        assert_eq!(after, before + 15, "{}", td.name);
        assert_eq!(free0 - after, 5);
        assert!(matches!(store.delete_blob(id), Err(Error::Busy(_))));
        drop(blob);
        store.delete_blob(id).unwrap();
        store.sync().unwrap();
        assert_eq!(store.info().free_clusters, free0);
        assert_clean(&store);
    }
}

#[test]
fn async_queue_of_many_requests() {
    for td in TestDev::all(64 << 20, 4096) {
        let store = td.format(CS);
        let id = store
            .create_blob(BlobOptions {
                thin: false,
                clusters: 64,
                ..Default::default()
            })
            .unwrap();
        let blob = store.open_blob(id).unwrap();
        let mut ch = store.channel().unwrap();
        let n = 256u64;
        let io = 16 * 1024u64;
        let mut out = Vec::new();
        for i in 0..n {
            let mut b = store.device().alloc_buf(io as usize);
            b.as_mut_slice()
                .copy_from_slice(&pattern(i, 0, io as usize));
            // Spread over the blob, crossing cluster boundaries sometimes.
            let off = (i * 7 * 4096) % (64 * CS as u64 - io);
            ch.submit_write(&blob, off - off % 4096, b, i).unwrap();
            while ch.in_flight() >= 32 {
                ch.wait(&mut out);
            }
        }
        while ch.in_flight() > 0 {
            ch.wait(&mut out);
        }
        assert_eq!(out.len(), n as usize);
        for c in &out {
            c.result.as_ref().unwrap();
        }
        // Read back with many in flight; the last writer of each range wins, so compare
        // against a sequential replay of the same writes.
        let mut model = vec![0u8; 64 * CS as usize];
        for i in 0..n {
            let off = (i * 7 * 4096) % (64 * CS as u64 - io);
            let off = (off - off % 4096) as usize;
            model[off..off + io as usize].copy_from_slice(&pattern(i, 0, io as usize));
        }
        let mut reads = Vec::new();
        for k in 0..(64 * CS as u64 / io) {
            let b = store.device().alloc_buf(io as usize);
            ch.submit_read(&blob, k * io, b, k).unwrap();
            if ch.in_flight() >= 32 {
                ch.wait(&mut reads);
            }
        }
        while ch.in_flight() > 0 {
            ch.wait(&mut reads);
        }
        assert_eq!(reads.len() as u64, 64 * CS as u64 / io);
        for c in reads {
            c.result.unwrap();
            let off = (c.tag * io) as usize;
            assert_eq!(
                c.buf.as_slice(),
                &model[off..off + io as usize],
                "{} tag {}",
                td.name,
                c.tag
            );
        }
    }
}

#[test]
fn overlapping_in_flight_writes_race_but_never_corrupt() {
    // Out-of-order completion: issue writes to disjoint ranges only and check each.
    let td = TestDev::mem(16 << 20, 512);
    let store = td.format(CS);
    let id = store
        .create_blob(BlobOptions {
            thin: true,
            clusters: 8,
            ..Default::default()
        })
        .unwrap();
    let blob = store.open_blob(id).unwrap();
    let mut ch = store.channel().unwrap();
    let mut out = Vec::new();
    for i in 0..64u64 {
        let b = driver::DmaBuf::from_slice(&pattern(i, 0, 8192));
        ch.submit_write(&blob, i * 8192, b, i).unwrap();
    }
    while ch.in_flight() > 0 {
        ch.wait(&mut out);
    }
    let mut all = vec![0u8; 8 * CS as usize];
    blob.read(&mut ch, 0, &mut all).unwrap();
    for i in 0..64usize {
        assert_eq!(
            &all[i * 8192..(i + 1) * 8192],
            &pattern(i as u64, 0, 8192)[..]
        );
    }
}

#[test]
fn xattrs_and_transactions_are_atomic() {
    for td in TestDev::all(16 << 20, 4096) {
        let store = td.format(CS);
        let a = store.create_blob(BlobOptions::default()).unwrap();
        let b = store.create_blob(BlobOptions::default()).unwrap();
        {
            let ba = store.open_blob(a).unwrap();
            ba.set_xattr_ns(XattrNs::Internal, b"entry", b"42").unwrap();
        }
        // Move the entry from a to b atomically.
        let mut t = store.transaction();
        t.remove_xattr(a, XattrNs::Internal, b"entry");
        t.set_xattr(b, XattrNs::Internal, b"entry", b"42");
        let c = t.create_blob(2);
        t.commit_sync().unwrap();
        let before = store.export();
        // A transaction that fails half-way leaves no trace.
        let mut t = store.transaction();
        t.set_xattr(a, XattrNs::User, b"x", b"1");
        t.delete_blob(c);
        t.remove_xattr(a, XattrNs::Internal, b"entry"); // not there any more: fails
        assert!(t.commit().is_err());
        assert_eq!(store.export(), before);
        store.close().unwrap();
        let store = td.open();
        assert_eq!(store.export(), before);
        let mb = store.blob_meta(b).unwrap();
        assert_eq!(
            mb.internal.get(&b"entry"[..]).map(|v| &v[..]),
            Some(&b"42"[..])
        );
        assert!(store.blob_meta(a).unwrap().internal.is_empty());
        assert_eq!(store.blob_meta(c).unwrap().clusters.len(), 2);
        assert_clean(&store);
        // Limits.
        let ba = store.open_blob(a).unwrap();
        assert!(ba.set_xattr(&[b'n'; 256], b"").is_err());
        assert!(ba.set_xattr(b"big", &vec![0u8; 64 * 1024 + 1]).is_err());
        ba.set_xattr(b"big", &vec![7u8; 64 * 1024]).unwrap();
        assert!(matches!(ba.remove_xattr(b"nope"), Err(Error::NoXattr(_))));
    }
}

#[test]
fn long_logs_jump_segments_and_checkpoint() {
    for td in TestDev::all(16 << 20, 512) {
        let store = Blobstore::create(
            Arc::clone(&td.dev),
            &blobstore::FormatOptions {
                cluster_size: 16 * 1024,
                ..Default::default()
            },
            OpenOptions {
                checkpoint_bytes: Some(128 * 1024),
                background_checkpoint: false,
                ..Default::default()
            },
        )
        .unwrap();
        let id = store.create_blob(BlobOptions::default()).unwrap();
        let blob = store.open_blob(id).unwrap();
        let mut checkpoints = 0;
        let mut last_gen = store.info().generation;
        for i in 0..600u32 {
            blob.set_xattr(
                format!("k{}", i % 50).as_bytes(),
                &vec![i as u8; (i % 700) as usize],
            )
            .unwrap();
            blob.sync().unwrap();
            let g = store.info().generation;
            if g != last_gen {
                checkpoints += 1;
                last_gen = g;
            }
        }
        assert!(checkpoints >= 2, "{}: {checkpoints} checkpoints", td.name);
        let want = store.export();
        drop(blob);
        drop(store);
        // Reopen without close: replays the log since the last checkpoint.
        let store = Blobstore::open(Arc::clone(&td.dev), OpenOptions::default()).unwrap();
        assert_eq!(store.export(), want);
        assert!(store.info().replay.segments >= 1);
        assert_clean(&store);
    }
}

#[test]
fn failed_metadata_write_turns_store_read_only() {
    let td = TestDev::mem(16 << 20, 4096);
    td.format(CS).close().unwrap();
    let plan = FaultPlan::new(CountMode::All, 7);
    let dev: Arc<dyn Device> = Arc::new(FaultDevice::new(Arc::clone(&td.dev), Arc::clone(&plan)));
    let store = Blobstore::open(dev, OpenOptions::default()).unwrap();
    let id = store.create_blob(BlobOptions::default()).unwrap();
    store.sync().unwrap();
    plan.fail(OpKind::Flush, 0, 1_000_000);
    let blob = store.open_blob(id).unwrap();
    blob.set_xattr(b"a", b"b").unwrap();
    let e = store.sync().unwrap_err();
    assert!(matches!(e, Error::Io(_)), "{e}");
    assert!(store.is_read_only());
    let e = blob.set_xattr(b"c", b"d").unwrap_err();
    assert!(matches!(e, Error::ReadOnly(_)), "{e}");
    assert!(e.to_string().contains("read-only"));
    let mut ch = store.channel().unwrap();
    assert!(matches!(
        blob.write(&mut ch, 0, &[0u8; 4096]),
        Err(Error::ReadOnly(_)) | Err(Error::Invalid(_))
    ));
    // Reads still work.
    assert_eq!(blob.get_xattr(b"a").as_deref(), Some(&b"b"[..]));
}

#[test]
fn unmap_and_write_zeroes() {
    for td in TestDev::all(16 << 20, 4096) {
        let store = td.format(CS);
        let id = store
            .create_blob(BlobOptions {
                thin: true,
                clusters: 4,
                ..Default::default()
            })
            .unwrap();
        let blob = store.open_blob(id).unwrap();
        let mut ch = store.channel().unwrap();
        let data = pattern(9, 0, 4 * CS as usize);
        blob.write(&mut ch, 0, &data).unwrap();
        assert_eq!(blob.allocated_clusters(), 4);
        // Whole cluster 1 released, part of cluster 2 zeroed.
        blob.unmap(&mut ch, CS as u64, CS as u64 + 8192).unwrap();
        assert_eq!(blob.allocated_clusters(), 3);
        blob.write_zeroes(&mut ch, 3 * CS as u64 + 4096, 4096)
            .unwrap();
        let mut want = data.clone();
        want[CS as usize..2 * CS as usize + 8192].fill(0);
        want[3 * CS as usize + 4096..3 * CS as usize + 8192].fill(0);
        let mut out = vec![0u8; 4 * CS as usize];
        blob.read(&mut ch, 0, &mut out).unwrap();
        assert!(out == want, "{}", td.name);
        store.sync().unwrap();
        drop(blob);
        drop(ch);
        drop(store);
        let store = td.open();
        let blob = store.open_blob(id).unwrap();
        let mut ch = store.channel().unwrap();
        blob.read(&mut ch, 0, &mut out).unwrap();
        assert!(out == want, "{} after reopen", td.name);
        assert_clean(&store);
    }
}

#[test]
fn read_only_blob_and_read_only_open() {
    let td = TestDev::mem(16 << 20, 4096);
    let store = td.format(CS);
    let id = store
        .create_blob(BlobOptions {
            thin: true,
            clusters: 1,
            ..Default::default()
        })
        .unwrap();
    let blob = store.open_blob(id).unwrap();
    blob.set_read_only().unwrap();
    assert!(matches!(
        blob.set_xattr(b"a", b"b"),
        Err(Error::ReadOnly(_))
    ));
    assert!(matches!(blob.resize(3), Err(Error::ReadOnly(_))));
    let mut ch = store.channel().unwrap();
    assert!(matches!(
        blob.write(&mut ch, 0, &[1u8; 4096]),
        Err(Error::ReadOnly(_))
    ));
    drop(blob);
    drop(ch);
    store.close().unwrap();
    let before = td.mem.as_ref().unwrap().stats();
    let ro = Blobstore::open(
        Arc::clone(&td.dev),
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(
        ro.create_blob(BlobOptions::default()),
        Err(Error::ReadOnly(_))
    ));
    assert!(ro.open_blob(id).unwrap().is_read_only());
    drop(ro);
    let after = td.mem.as_ref().unwrap().stats();
    assert_eq!(before.writes, after.writes, "read-only open wrote");
    assert_eq!(before.flushes, after.flushes);
}

#[test]
fn bad_arguments_are_errors() {
    let td = TestDev::mem(16 << 20, 4096);
    let store = td.format(CS);
    let id = store
        .create_blob(BlobOptions {
            thin: true,
            clusters: 1,
            ..Default::default()
        })
        .unwrap();
    let blob = store.open_blob(id).unwrap();
    let mut ch = store.channel().unwrap();
    assert!(matches!(
        blob.write(&mut ch, 100, &[0u8; 4096]),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        blob.write(&mut ch, 0, &[0u8; 100]),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        blob.write(&mut ch, CS as u64, &[0u8; 4096]),
        Err(Error::Invalid(_))
    ));
    let mut out = [0u8; 4096];
    assert!(matches!(
        blob.read(&mut ch, u64::MAX - 4095, &mut out),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        store.open_blob(blobstore::BlobId(999)),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.delete_blob(blobstore::BlobId(999)),
        Err(Error::NotFound(_))
    ));
    assert!(blob.resize(u64::MAX).is_err());
    // Formatting bad geometry.
    let tiny = TestDev::mem(64 * 1024, 4096);
    assert!(Blobstore::format(Arc::clone(&tiny.dev), &Default::default()).is_err());
    assert!(Blobstore::format(
        Arc::clone(&td.dev),
        &blobstore::FormatOptions {
            cluster_size: 3000,
            ..Default::default()
        }
    )
    .is_err());
    // Not a blobstore.
    let blank = TestDev::mem(16 << 20, 4096);
    assert!(matches!(
        Blobstore::open(Arc::clone(&blank.dev), OpenOptions::default()),
        Err(Error::NotABlobstore(_))
    ));
}

#[test]
fn enospc_then_recovers_after_delete() {
    let td = TestDev::mem(4 << 20, 4096);
    let store = td.format(64 * 1024);
    let id = store
        .create_blob(BlobOptions {
            thin: true,
            clusters: 64,
            ..Default::default()
        })
        .unwrap();
    let blob = store.open_blob(id).unwrap();
    let mut ch = store.channel().unwrap();
    let chunk = pattern(3, 0, 64 * 1024);
    let mut written = 0;
    let err = loop {
        match blob.write(&mut ch, written * 64 * 1024, &chunk) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 64, "never ran out of space");
    };
    assert!(matches!(err, Error::NoSpace(_)), "{err}");
    assert!(written > 30);
    // Metadata still commits (the reserve), and space comes back after a delete.
    store.sync().unwrap();
    drop(blob);
    store.delete_blob(id).unwrap();
    store.sync().unwrap();
    let id2 = store
        .create_blob(BlobOptions {
            thin: true,
            clusters: 8,
            ..Default::default()
        })
        .unwrap();
    let b2 = store.open_blob(id2).unwrap();
    b2.write(&mut ch, 0, &chunk).unwrap();
    store.sync().unwrap();
    assert_clean(&store);
}

#[test]
fn group_commit_shares_flushes() {
    // A flush that takes time, as on a real device: that is what group commit amortizes.
    let mem = driver::mem::MemDevice::new(driver::mem::MemOptions {
        capacity: 64 << 20,
        flush_delay: std::time::Duration::from_micros(300),
        ..Default::default()
    })
    .unwrap();
    let td = TestDev {
        name: "mem-slow-flush",
        dev: Arc::new(mem.clone()),
        mem: Some(mem),
        dir: None,
        path: None,
    };
    let store = td.format(CS);
    let threads = 8;
    let per = 50;
    let ids: Vec<_> = (0..threads)
        .map(|_| store.create_blob(BlobOptions::default()).unwrap())
        .collect();
    store.sync().unwrap();
    td.mem.as_ref().unwrap().reset_stats();
    std::thread::scope(|s| {
        for id in &ids {
            let store = store.clone();
            let id = *id;
            s.spawn(move || {
                let b = store.open_blob(id).unwrap();
                for i in 0..per {
                    b.set_xattr(b"n", format!("{i}").as_bytes()).unwrap();
                    b.sync().unwrap();
                }
            });
        }
    });
    let stats = td.mem.as_ref().unwrap().stats();
    let syncs = (threads * per) as u64;
    eprintln!(
        "group commit: {syncs} syncs, {} flushes, {} log writes",
        stats.flushes, stats.writes
    );
    assert!(
        stats.flushes < syncs,
        "no grouping: {} flushes for {syncs} syncs",
        stats.flushes
    );
    for id in &ids {
        assert_eq!(
            store.blob_meta(*id).unwrap().xattrs[&b"n"[..]],
            format!("{}", per - 1).into_bytes()
        );
    }
    assert_clean(&store);
}

#[test]
fn background_checkpoints_while_committing() {
    for td in TestDev::all(32 << 20, 4096) {
        let store = Blobstore::create(
            Arc::clone(&td.dev),
            &blobstore::FormatOptions {
                cluster_size: 16 * 1024,
                ..Default::default()
            },
            OpenOptions {
                checkpoint_bytes: Some(64 * 1024),
                ..Default::default()
            },
        )
        .unwrap();
        let ids: Vec<_> = (0..4)
            .map(|_| store.create_blob(BlobOptions::default()).unwrap())
            .collect();
        let gen0 = store.info().generation;
        std::thread::scope(|s| {
            for id in &ids {
                let store = store.clone();
                let id = *id;
                s.spawn(move || {
                    let b = store.open_blob(id).unwrap();
                    for i in 0..300u32 {
                        b.set_xattr(format!("k{}", i % 20).as_bytes(), &i.to_le_bytes())
                            .unwrap();
                        b.sync().unwrap();
                    }
                });
            }
        });
        store.wait_background();
        let gens = store.info().generation - gen0;
        assert!(gens >= 2, "{}: only {gens} checkpoints", td.name);
        let want = store.export();
        assert_clean(&store);
        drop(store);
        let store = td.open();
        assert_eq!(store.export(), want, "{}", td.name);
        assert_clean(&store);
    }
}
