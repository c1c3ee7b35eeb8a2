//! Recovery: how long loading a store takes after a crash, against the length of the
//! metadata log it must replay and against the size of the device.
//!
//! - `recovery-log-N` (N = 1k, 10k, 100k metadata records; 100k only in full mode): a store
//!   on a 1 GiB image file, driven through the io_uring backend (O_DIRECT, real reads), gets
//!   1000 blobs and a checkpoint, then N metadata changes (xattr sets, resizes) synced in
//!   groups of 100, with a checkpoint threshold far above what they write, so they all stay
//!   in the log. The crash: the store is dropped without `close`. The baseline is a copy of
//!   that image loaded once and checkpointed, so it holds the same metadata with an empty
//!   log: the difference between the two load times is the cost of replaying N records.
//! - `recovery-device-1t`: the same metadata (1000 blobs, 3000 synced changes after a
//!   checkpoint) built on a 1 GiB and on a sparse 1 TiB in-memory device, power cut with
//!   every unflushed write dropped; ours is the load time on 1 TiB, the baseline on 1 GiB.
//!   The target (ratio >= 0.5) says loading costs what the log holds, not what the device
//!   holds: within 2x of the small device.
//!
//! Every load is checked to give the metadata as of the last sync. Load times are the best
//! of several loads, alternating between the two images of a case, so that a burst of
//! noise from elsewhere on the machine hits both sides alike.

use crate::{fmt_num, note, run_cmd, Better, Case, Ctx, Results};
use anyhow::{ensure, Context, Result};
use blobstore::recovery::ReplayStats;
use blobstore::{BlobId, BlobMeta, BlobOptions, Blobstore, FormatOptions, OpenOptions, XattrNs};
use driver::mem::{CutPolicy, MemDevice, MemOptions};
use driver::uring::{UringDevice, UringOptions};
use driver::Device;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLUSTER: u32 = 1 << 20;
const LBA: u32 = 4096;
/// Blobs made before the checkpoint that starts the measured log.
const BLOBS: usize = 1000;
/// Metadata changes per sync (one log group) in the log cases.
const GROUP: usize = 100;
/// Checkpoint threshold: far above any log built here, so no checkpoint cuts it (the store
/// keeps twice this much free for the log, so it must also fit the device comfortably).
const CHECKPOINT_BYTES: u64 = 64 << 20;
/// Size of the image files of the log cases.
const FILE_SIZE: u64 = 1 << 30;
/// Changes after the checkpoint in the device-size case.
const DEVICE_CHANGES: usize = 3000;

type Export = BTreeMap<BlobId, BlobMeta>;

fn open_opts() -> OpenOptions {
    OpenOptions {
        checkpoint_bytes: Some(CHECKPOINT_BYTES),
        ..OpenOptions::default()
    }
}

/// What a built (and crashed) store holds.
struct Built {
    /// Metadata as of the last sync: what every load must give.
    synced: Export,
    log_bytes: u64,
}

/// Makes `BLOBS` blobs with a name and an inode-like internal xattr, then checkpoints.
fn populate(store: &Blobstore) -> Result<Vec<BlobId>> {
    let mut ids = Vec::with_capacity(BLOBS);
    for i in 0..BLOBS {
        let thick = i % 5 == 0;
        let id = store.create_blob(BlobOptions {
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
        })?;
        ids.push(id);
        if i % 50 == 49 {
            store.sync()?;
        }
    }
    store.checkpoint()?;
    Ok(ids)
}

/// `n` metadata changes (one record each: mostly an mtime-like xattr, some directory-entry
/// like internal xattrs and resizes), synced every `group`.
fn change(store: &Blobstore, ids: &[BlobId], n: usize, group: usize, seed: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..n {
        let id = ids[rng.gen_range(0..ids.len())];
        let b = store.open_blob(id)?;
        match rng.gen_range(0..10) {
            0 if b.is_thin() => b.resize(b.num_clusters() + 1)?,
            1 => b.set_xattr_ns(XattrNs::Internal, b"dirent", &[i as u8; 120])?,
            _ => b.set_xattr(b"mtime", format!("{i:012}").as_bytes())?,
        }
        drop(b);
        if (i + 1) % group == 0 || i + 1 == n {
            store.sync()?;
        }
    }
    Ok(())
}

/// Builds the log of `changes` records on `store`, checks no checkpoint cut it, and makes a
/// change that is never synced (lost in the crash).
fn build_log(store: &Blobstore, changes: usize, group: usize) -> Result<Built> {
    let ids = populate(store)?;
    let checkpoints = store.info().checkpoint_count;
    change(store, &ids, changes, group, 7)?;
    let info = store.info();
    ensure!(
        info.checkpoint_count == checkpoints,
        "a checkpoint cut the log ({} bytes)",
        info.log_bytes
    );
    let synced = store.export();
    let b = store.open_blob(ids[1])?;
    b.set_xattr(b"lost", b"yes")?;
    Ok(Built {
        synced,
        log_bytes: info.log_bytes,
    })
}

/// A file-backed device through io_uring.
fn file_dev(path: &Path) -> Result<Arc<dyn Device>> {
    let p = path
        .to_str()
        .with_context(|| format!("{}: path is not UTF-8", path.display()))?;
    let dev = UringDevice::open(
        p,
        &UringOptions {
            lba_size: Some(LBA),
            read_only: false,
        },
    )
    .with_context(|| format!("opening {p} with io_uring"))?;
    Ok(Arc::new(dev))
}

/// One load: (time of `Blobstore::open`, replay figures), checked against `want`.
fn load(dev: Arc<dyn Device>, want: &Export, what: &str) -> Result<(Duration, ReplayStats)> {
    let t = Instant::now();
    let store = Blobstore::open(dev, open_opts()).with_context(|| format!("loading {what}"))?;
    let el = t.elapsed();
    let stats = store.info().replay;
    ensure!(
        &store.export() == want,
        "{what}: the loaded metadata is not what was synced"
    );
    drop(store);
    Ok((el, stats))
}

/// Best load time of each of two images over `rounds` alternating loads, with the replay
/// figures of each (which must not change from one load to the next).
fn alternate(
    rounds: usize,
    mut a: impl FnMut() -> Result<(Duration, ReplayStats)>,
    mut b: impl FnMut() -> Result<(Duration, ReplayStats)>,
) -> Result<[(Duration, ReplayStats); 2]> {
    let mut best: [Option<(Duration, ReplayStats)>; 2] = [None, None];
    for r in 0..rounds {
        // Alternate which goes first, too.
        let order: [usize; 2] = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let (t, s) = if side == 0 { a()? } else { b()? };
            match &mut best[side] {
                None => best[side] = Some((t, s)),
                Some((bt, bs)) => {
                    ensure!(
                        *bs == s,
                        "the image changed between loads: {bs:?} then {s:?}"
                    );
                    *bt = (*bt).min(t);
                }
            }
        }
    }
    match best {
        [Some(x), Some(y)] => Ok([x, y]),
        _ => anyhow::bail!("no loads measured"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn label(n: usize) -> String {
    if n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// One log-length case on image files in `dir`.
fn log_case(dir: &Path, changes: usize, rounds: usize) -> Result<Case> {
    let name = format!("recovery-log-{}", label(changes));
    let crashed: PathBuf = dir.join(format!("{name}.img"));
    let ckpt: PathBuf = dir.join(format!("{name}-checkpointed.img"));
    let res = (|| -> Result<Case> {
        let f = std::fs::File::create(&crashed)
            .with_context(|| format!("creating {}", crashed.display()))?;
        f.set_len(FILE_SIZE)?;
        drop(f);
        let t = Instant::now();
        let built = {
            let store = Blobstore::create(
                file_dev(&crashed)?,
                &FormatOptions {
                    cluster_size: CLUSTER,
                    discard: true,
                    uuid: Some([7; 16]),
                },
                open_opts(),
            )?;
            let built = build_log(&store, changes, GROUP)?;
            // The crash: no close, so no checkpoint; what was synced is on the file.
            drop(store);
            built
        };
        let build_s = t.elapsed().as_secs_f64();
        // The same metadata with an empty log: a copy, loaded and checkpointed.
        run_cmd(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(&crashed)
                .arg(&ckpt),
        )?;
        {
            let store = Blobstore::open(file_dev(&ckpt)?, open_opts())?;
            ensure!(
                store.export() == built.synced,
                "{name}: recovered metadata differs from what was synced"
            );
            store.checkpoint()?;
            store.close()?;
        }
        let [(t_log, s_log), (t_ckpt, s_ckpt)] = alternate(
            rounds,
            || load(file_dev(&crashed)?, &built.synced, "the crashed image"),
            || load(file_dev(&ckpt)?, &built.synced, "the checkpointed image"),
        )?;
        ensure!(
            s_log.records >= changes as u64,
            "{name}: replayed only {} records",
            s_log.records
        );
        let per_record_us = (ms(t_log) - ms(t_ckpt)) * 1e3 / changes as f64;
        note(format!(
            "{name}: built in {build_s:.1}s; log {} bytes; replay {s_log:?}; checkpointed {s_ckpt:?}",
            built.log_bytes
        ));
        Ok(Case {
            group: "recovery".into(),
            name: name.clone(),
            ours: ms(t_log),
            baseline: ms(t_ckpt),
            unit: "ms".into(),
            better: Better::Lower,
            target: None,
            ours_how: format!(
                "Blobstore::open (OpenOptions with checkpoint_bytes={CHECKPOINT_BYTES}) through \
                 the io_uring backend (O_DIRECT, {LBA}-byte LBAs) on a {} MiB image file after \
                 a crash (store dropped without close): {BLOBS} blobs and a checkpoint, then \
                 {changes} metadata records (xattr sets, resizes) synced {GROUP} per group; \
                 best of {rounds} loads",
                FILE_SIZE >> 20
            ),
            baseline_how: format!(
                "Blobstore::open of a copy of that image loaded once and checkpointed (same \
                 metadata, empty log); best of {rounds} loads, alternating with ours"
            ),
            note: format!(
                "{} us per logged record over the checkpointed load. Crashed image: {} records \
                 replayed ({changes} logged after the checkpoint, the rest its snapshot) in {} \
                 groups, {} log blocks, {} bytes read; checkpointed image: {} records (the \
                 snapshot) in {} group, {} bytes read; log {} bytes",
                fmt_num(per_record_us),
                s_log.records,
                s_log.groups,
                s_log.blocks,
                s_log.bytes_read,
                s_ckpt.records,
                s_ckpt.groups,
                s_ckpt.bytes_read,
                built.log_bytes
            ),
        })
    })();
    let _ = std::fs::remove_file(&crashed);
    let _ = std::fs::remove_file(&ckpt);
    res
}

/// The same metadata on an in-memory device of `capacity` bytes, power cut: the image and
/// the state as of the last sync.
fn build_mem(capacity: u64, changes: usize) -> Result<(MemDevice, Built)> {
    let mem = MemDevice::new(MemOptions {
        capacity,
        lba_size: LBA,
        ..MemOptions::default()
    })?;
    let store = Blobstore::create(
        Arc::new(mem.clone()),
        &FormatOptions {
            cluster_size: CLUSTER,
            discard: true,
            uuid: Some([3; 16]),
        },
        open_opts(),
    )?;
    // One group per change, as in blobstore/tests/recovery_cost.rs.
    let built = build_log(&store, changes, 1)?;
    let img = mem.power_cut(CutPolicy::DropAll, &mut StdRng::seed_from_u64(1));
    drop(store);
    Ok((img, built))
}

fn device_case(rounds: usize) -> Result<Case> {
    let t = Instant::now();
    let (small, sb) = build_mem(1 << 30, DEVICE_CHANGES)?;
    let (large, lb) = build_mem(1 << 40, DEVICE_CHANGES)?;
    let build_s = t.elapsed().as_secs_f64();
    ensure!(sb.synced == lb.synced, "the two builds differ");
    ensure!(
        sb.log_bytes == lb.log_bytes,
        "the two logs differ in length"
    );
    let load_mem = |img: &MemDevice, want: &Export, what: &str| {
        img.reset_stats();
        let r = load(Arc::new(img.clone()), want, what)?;
        Ok::<_, anyhow::Error>((r, img.stats().bytes_read))
    };
    let mut bytes = [0u64; 2];
    let [(t_small, s_small), (t_large, s_large)] = {
        let (bytes_s, bytes_l) = bytes.split_at_mut(1);
        alternate(
            rounds,
            || {
                let (r, b) = load_mem(&small, &sb.synced, "the 1 GiB image")?;
                bytes_s[0] = b;
                Ok(r)
            },
            || {
                let (r, b) = load_mem(&large, &lb.synced, "the 1 TiB image")?;
                bytes_l[0] = b;
                Ok(r)
            },
        )?
    };
    note(format!(
        "recovery-device-1t: built in {build_s:.1}s; replay 1 GiB {s_small:?}; 1 TiB {s_large:?}"
    ));
    Ok(Case {
        group: "recovery".into(),
        name: "recovery-device-1t".into(),
        ours: ms(t_large),
        baseline: ms(t_small),
        unit: "ms".into(),
        better: Better::Lower,
        target: Some(0.5),
        ours_how: format!(
            "Blobstore::open on a sparse 1 TiB in-memory device (mem backend, {LBA}-byte LBAs, \
             1 MiB clusters) after a power cut dropping every unflushed write: {BLOBS} blobs \
             and a checkpoint, then {DEVICE_CHANGES} metadata records synced one per group; \
             best of {rounds} loads"
        ),
        baseline_how: format!(
            "the same on a 1 GiB in-memory device (same metadata, same log); best of {rounds} \
             loads, alternating with ours"
        ),
        note: format!(
            "target 0.5 = within 2x of the 1 GiB load: loading reads the superblocks and the \
             log, not the device. Bytes read: {} (1 TiB) vs {} (1 GiB); {} records in {} \
             groups replayed; log {} bytes",
            bytes[1], bytes[0], s_large.records, s_large.groups, lb.log_bytes
        ),
    })
}

pub fn run(ctx: &Ctx, out: &mut Results) -> Result<()> {
    let rounds = ctx.pick(15, 7);
    let lengths: &[usize] = ctx.pick(&[1_000, 10_000, 100_000], &[1_000, 10_000]);
    for &n in lengths {
        match log_case(&ctx.dir, n, rounds) {
            Ok(c) => out.push(c),
            Err(e) => out.fail(&format!("recovery-log-{}", label(n)), format!("{e:#}")),
        }
    }
    match device_case(rounds) {
        Ok(c) => out.push(c),
        Err(e) => out.fail("recovery-device-1t", format!("{e:#}")),
    }
    Ok(())
}
