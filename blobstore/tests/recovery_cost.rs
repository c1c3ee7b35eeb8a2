//! Loading a store costs what its metadata log holds, not what the device holds: the same
//! metadata on a 1 GiB and on a 1 TiB device loads with the same bytes read and about the
//! same time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use blobstore::{BlobId, BlobMeta, BlobOptions, Blobstore, FormatOptions, OpenOptions, XattrNs};
use driver::mem::{CutPolicy, MemDevice, MemOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::pattern;

const CS: u32 = 1 << 20;
const LBA: u32 = 4096;
const BLOBS: usize = 1000;
const CHANGES: usize = 3000;

type Export = BTreeMap<BlobId, BlobMeta>;

/// Builds the same metadata on a device of `capacity` bytes, then crashes it: returns the
/// image a power cut leaves and the state at the last sync.
fn build(capacity: u64) -> (MemDevice, Export, u64) {
    let mem = MemDevice::new(MemOptions {
        capacity,
        lba_size: LBA,
        ..MemOptions::default()
    })
    .unwrap();
    let opts = OpenOptions {
        // The same on both devices, and large enough that no checkpoint happens during
        // the changes: they all stay in the log that loading replays.
        checkpoint_bytes: Some(64 << 20),
        ..OpenOptions::default()
    };
    let store = Blobstore::create(
        Arc::new(mem.clone()),
        &FormatOptions {
            cluster_size: CS,
            uuid: Some([3; 16]),
            ..FormatOptions::default()
        },
        opts,
    )
    .unwrap();
    let mut ch = store.channel().unwrap();
    let mut ids = Vec::with_capacity(BLOBS);
    for i in 0..BLOBS {
        let thick = i % 5 == 0;
        let id = store
            .create_blob(BlobOptions {
                thin: !thick,
                clusters: if thick { 1 } else { 4 },
                xattrs: vec![
                    (
                        XattrNs::User,
                        b"name".to_vec(),
                        format!("blob-{i:05}").into_bytes(),
                    ),
                    (XattrNs::Internal, b"inode".to_vec(), vec![i as u8; 64]),
                ],
            })
            .unwrap();
        if i % 3 == 0 && !thick {
            let b = store.open_blob(id).unwrap();
            let off = u64::from(CS) * (i as u64 % 4);
            b.write(&mut ch, off, &pattern(i as u64, off, LBA as usize))
                .unwrap();
        }
        ids.push(id);
        if i % 50 == 49 {
            store.sync().unwrap();
        }
    }
    store.checkpoint().unwrap();
    let checkpoints = store.info().checkpoint_count;
    // A long log after the checkpoint: one group per change.
    let mut rng = StdRng::seed_from_u64(7);
    for n in 0..CHANGES {
        let id = ids[rng.gen_range(0..ids.len())];
        let b = store.open_blob(id).unwrap();
        match rng.gen_range(0..10) {
            0 if b.is_thin() => b.resize(b.num_clusters() + 1).unwrap(),
            1 => b
                .set_xattr_ns(XattrNs::Internal, b"dirent", &[n as u8; 120])
                .unwrap(),
            _ => b
                .set_xattr(b"mtime", format!("{n:012}").as_bytes())
                .unwrap(),
        }
        drop(b);
        store.sync().unwrap();
    }
    let info = store.info();
    assert_eq!(
        info.checkpoint_count, checkpoints,
        "a checkpoint cut the log"
    );
    let synced = store.export();
    // Unsynced changes, lost in the crash.
    let b = store.open_blob(ids[1]).unwrap();
    b.set_xattr(b"lost", b"yes").unwrap();
    drop(b);
    store.create_blob(BlobOptions::default()).unwrap();
    let img = mem.power_cut(CutPolicy::DropAll, &mut StdRng::seed_from_u64(1));
    drop(ch);
    drop(store);
    (img, synced, info.log_bytes)
}

/// Opens `img` once: (time, bytes read, the store).
fn load(img: &MemDevice) -> (Duration, u64, Blobstore) {
    img.reset_stats();
    let t = Instant::now();
    let store = Blobstore::open(Arc::new(img.clone()), OpenOptions::default()).unwrap();
    let el = t.elapsed();
    (el, img.stats().bytes_read, store)
}

#[test]
fn recovery_cost_is_independent_of_device_size() {
    let t0 = Instant::now();
    let (small, small_state, small_log) = build(1 << 30);
    let (large, large_state, large_log) = build(1 << 40);
    let build_time = t0.elapsed();
    assert_eq!(small_state, large_state, "the two builds differ");
    assert_eq!(small_log, large_log);
    assert!(
        small_log > 8 * u64::from(CS),
        "log of only {small_log} bytes"
    );

    // Each load replays the log since the checkpoint and must give the last synced state.
    for (img, name) in [(&small, "1 GiB"), (&large, "1 TiB")] {
        let (_, _, s) = load(img);
        assert_eq!(s.export(), small_state, "{name}: loaded state");
        let r = s.info().replay;
        assert!(r.groups as usize > CHANGES, "{name}: replayed {r:?}");
        support::assert_clean(&s);
    }

    // Best of a few repetitions, alternating, to keep noise out of the comparison; measure
    // again a couple of times if a ratio still looks off.
    let mut attempt = 0;
    let (ts, tl, bs, bl) = loop {
        attempt += 1;
        let (mut ts, mut tl) = (Duration::MAX, Duration::MAX);
        let (mut bs, mut bl) = (0, 0);
        for _ in 0..5 {
            let (t, b, s) = load(&small);
            drop(s);
            ts = ts.min(t);
            assert!(bs == 0 || bs == b);
            bs = b;
            let (t, b, s) = load(&large);
            drop(s);
            tl = tl.min(t);
            assert!(bl == 0 || bl == b);
            bl = b;
        }
        let ratio = tl.as_secs_f64() / ts.as_secs_f64();
        if ratio < 2.0 || attempt == 3 {
            break (ts, tl, bs, bl);
        }
        eprintln!("recovery: time ratio {ratio:.2} on attempt {attempt}, measuring again");
    };
    // Straight to stdout (not through the test harness's capture), so the figures show in
    // a plain `cargo test` run.
    summary(&format!(
        "recovery: small_bytes_read={bs} large_bytes_read={bl}"
    ));
    summary(&format!(
        "recovery: small_open_time={:.3}ms large_open_time={:.3}ms time_ratio={:.2} (log {} bytes, {} changes, {} blobs; build {:?})",
        ts.as_secs_f64() * 1e3,
        tl.as_secs_f64() * 1e3,
        tl.as_secs_f64() / ts.as_secs_f64(),
        small_log,
        CHANGES,
        BLOBS,
        build_time
    ));
    let bytes_ratio = bl as f64 / bs as f64;
    assert!(bytes_ratio < 2.0, "bytes read: {bl} vs {bs}");
    let time_ratio = tl.as_secs_f64() / ts.as_secs_f64();
    assert!(time_ratio < 2.0, "open time: {tl:?} vs {ts:?}");
    // Loading reads the superblocks and the log, nothing else.
    assert!(
        bs <= 2 * 4096 + small_log.div_ceil(u64::from(CS)) * u64::from(CS) + u64::from(CS),
        "read {bs} bytes for a log of {small_log}"
    );
}

/// Writes a line to the real stdout, bypassing the test harness's output capture.
fn summary(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
