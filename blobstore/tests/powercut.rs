//! Power-cut sweeps: run a workload on the in-memory device, cut the power after mutating
//! command number N for every N, let the volatile cache drop, keep or tear what was not
//! flushed, reload, and check:
//!
//! - the store loads and its consistency check (memory and on-disk replay) is clean;
//! - the metadata equals the model's state at some point between the last acknowledged
//!   sync and the step that was cut (nothing acknowledged is lost, transactions are whole);
//! - every I/O unit of every blob holds a value it had at some point of that window
//!   (no stale data from other blobs, no acknowledged data lost).
//!
//! One line per workload: `power-cut: workload=NAME points=N lost=0 inconsistent=0`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use blobstore::{BlobOptions, Blobstore, Error, FormatOptions, OpenOptions, XattrNs};
use driver::fault::{CountMode, FaultDevice, FaultPlan};
use driver::mem::{CutPolicy, MemDevice, MemOptions};
use driver::Device;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use support::pattern;

const LBA: u64 = 512;

#[derive(Clone, Debug)]
enum Step {
    Create {
        thin: bool,
        clusters: u64,
    },
    Delete {
        pick: usize,
    },
    Resize {
        pick: usize,
        clusters: u64,
    },
    Write {
        pick: usize,
        unit: u64,
        units: u64,
    },
    Unmap {
        pick: usize,
        unit: u64,
        units: u64,
    },
    Zeroes {
        pick: usize,
        unit: u64,
        units: u64,
    },
    SetX {
        pick: usize,
        internal: bool,
        name: u8,
        len: usize,
    },
    RemoveX {
        pick: usize,
        which: usize,
    },
    MoveX {
        from: usize,
        to: usize,
    },
    TxnCreateDelete {
        pick: usize,
        clusters: u64,
    },
    ReadOnly {
        pick: usize,
    },
    Sync,
    Checkpoint,
    Snapshot {
        pick: usize,
    },
    Clone {
        pick: usize,
    },
    Inflate {
        pick: usize,
    },
    Decouple {
        pick: usize,
    },
    DeleteAbsorbed {
        pick: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct MBlob {
    flags: u64,
    clusters: u64,
    data: Vec<u8>,
    xattrs: Xattrs,
    /// Parent blob (0: none).
    parent: u64,
}

/// Blobs whose parent is `id`.
fn children(model: &Model, id: u64) -> Vec<u64> {
    model
        .iter()
        .filter(|(_, b)| b.parent == id)
        .map(|(k, _)| *k)
        .collect()
}

type Model = BTreeMap<u64, MBlob>;
type Xattrs = BTreeMap<(bool, Vec<u8>), Vec<u8>>;

/// Metadata only: what must match a model state exactly.
fn meta_of(m: &Model) -> Vec<(u64, u64, u64, &Xattrs, u64)> {
    m.iter()
        .map(|(id, b)| (*id, b.flags, b.clusters, &b.xattrs, b.parent))
        .collect()
}

struct Profile {
    name: &'static str,
    cluster: u32,
    capacity: u64,
    checkpoint_bytes: Option<u64>,
    steps: usize,
    /// Weights per step kind, in the order of `make_step`.
    weights: [u32; 18],
}

fn make_step(rng: &mut StdRng, p: &Profile) -> Step {
    let total: u32 = p.weights.iter().sum();
    let mut x = rng.gen_range(0..total);
    let mut kind = 0;
    for (i, w) in p.weights.iter().enumerate() {
        if x < *w {
            kind = i;
            break;
        }
        x -= w;
    }
    let pick = rng.gen_range(0..64);
    let units_per_cluster = u64::from(p.cluster) / LBA;
    let unit = rng.gen_range(0..4 * units_per_cluster);
    let units = rng.gen_range(1..=units_per_cluster + units_per_cluster / 2);
    match kind {
        0 => Step::Create {
            thin: rng.gen_bool(0.7),
            clusters: rng.gen_range(0..=3),
        },
        1 => Step::Delete { pick },
        2 => Step::Resize {
            pick,
            clusters: rng.gen_range(0..=4),
        },
        3 => Step::Write { pick, unit, units },
        4 => Step::Unmap { pick, unit, units },
        5 => Step::Zeroes { pick, unit, units },
        6 => Step::SetX {
            pick,
            internal: rng.gen_bool(0.5),
            name: rng.gen_range(0..6),
            len: rng.gen_range(0..600),
        },
        7 => Step::RemoveX {
            pick,
            which: rng.gen_range(0..8),
        },
        8 => Step::MoveX {
            from: pick,
            to: rng.gen_range(0..64),
        },
        9 => Step::TxnCreateDelete {
            pick,
            clusters: rng.gen_range(0..=2),
        },
        10 => Step::ReadOnly { pick },
        11 => Step::Sync,
        12 => Step::Checkpoint,
        13 => Step::Snapshot { pick },
        14 => Step::Clone { pick },
        15 => Step::Inflate { pick },
        16 => Step::Decouple { pick },
        _ => Step::DeleteAbsorbed { pick },
    }
}

fn pick_id(model: &Model, pick: usize) -> Option<u64> {
    if model.is_empty() {
        return None;
    }
    model.keys().nth(pick % model.len()).copied()
}

fn clamp(b: &MBlob, cs: u64, unit: u64, units: u64) -> Option<(u64, u64)> {
    let total = b.clusters * cs / LBA;
    if total == 0 {
        return None;
    }
    let unit = unit % total;
    let units = units.min(total - unit);
    Some((unit * LBA, units * LBA))
}

/// Runs one step on the store and the model. Returns whether it was an acknowledged sync.
/// Steps that make no sense for the current model (no blobs, read-only target) do nothing.
fn exec(
    step: &Step,
    tag: u64,
    store: &Blobstore,
    ch: &mut blobstore::IoChannel,
    model: &mut Model,
    cs: u64,
) -> Result<bool, Error> {
    match step {
        Step::Create { thin, clusters } => {
            let id = match store.create_blob(BlobOptions {
                thin: *thin,
                clusters: *clusters,
                ..Default::default()
            }) {
                // A full device refuses a thick blob without changing anything.
                Err(Error::NoSpace(_)) => return Ok(false),
                r => r?,
            };
            model.insert(
                id.0,
                MBlob {
                    flags: if *thin { 1 } else { 0 },
                    clusters: *clusters,
                    data: vec![0; (*clusters * cs) as usize],
                    xattrs: BTreeMap::new(),
                    parent: 0,
                },
            );
        }
        Step::Delete { pick } => {
            if let Some(id) = pick_id(model, *pick) {
                if !children(model, id).is_empty() {
                    // Refused (the blob has clones) and nothing changes: checked here.
                    assert!(store.delete_blob(blobstore::BlobId(id)).is_err());
                    return Ok(false);
                }
                store.delete_blob(blobstore::BlobId(id))?;
                model.remove(&id);
            }
        }
        Step::Resize { pick, clusters } => {
            if let Some(id) = pick_id(model, *pick) {
                let b = model.get_mut(&id).unwrap();
                if b.flags & 2 == 0 {
                    match store.open_blob(blobstore::BlobId(id))?.resize(*clusters) {
                        Err(Error::NoSpace(_)) => return Ok(false),
                        r => r?,
                    }
                    b.clusters = *clusters;
                    b.data.resize((*clusters * cs) as usize, 0);
                }
            }
        }
        Step::Write { pick, unit, units } => {
            if let Some(id) = pick_id(model, *pick) {
                let b = model.get_mut(&id).unwrap();
                if let (Some((off, len)), 0) = (clamp(b, cs, *unit, *units), b.flags & 2) {
                    let data = pattern(tag, off, len as usize);
                    let blob = store.open_blob(blobstore::BlobId(id))?;
                    match blob.write(ch, off, &data) {
                        Ok(()) => b.data[off as usize..(off + len) as usize].copy_from_slice(&data),
                        Err(Error::NoSpace(_)) => {
                            // Pieces before the full cluster were written: take what the
                            // store holds now (the same in every run of these steps).
                            let r = off as usize..(off + len) as usize;
                            blob.read(ch, off, &mut b.data[r])?;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Step::Unmap { pick, unit, units } | Step::Zeroes { pick, unit, units } => {
            if let Some(id) = pick_id(model, *pick) {
                let b = model.get_mut(&id).unwrap();
                if let (Some((off, len)), 0) = (clamp(b, cs, *unit, *units), b.flags & 2) {
                    let blob = store.open_blob(blobstore::BlobId(id))?;
                    if matches!(step, Step::Unmap { .. }) {
                        blob.unmap(ch, off, len)?;
                    } else {
                        blob.write_zeroes(ch, off, len)?;
                    }
                    b.data[off as usize..(off + len) as usize].fill(0);
                }
            }
        }
        Step::SetX {
            pick,
            internal,
            name,
            len,
        } => {
            if let Some(id) = pick_id(model, *pick) {
                let b = model.get_mut(&id).unwrap();
                if b.flags & 2 == 0 {
                    let name = format!("x{name}").into_bytes();
                    let value = pattern(tag, 0, *len);
                    let ns = if *internal {
                        XattrNs::Internal
                    } else {
                        XattrNs::User
                    };
                    store
                        .open_blob(blobstore::BlobId(id))?
                        .set_xattr_ns(ns, &name, &value)?;
                    b.xattrs.insert((*internal, name), value);
                }
            }
        }
        Step::RemoveX { pick, which } => {
            if let Some(id) = pick_id(model, *pick) {
                let b = model.get_mut(&id).unwrap();
                if b.flags & 2 == 0 && !b.xattrs.is_empty() {
                    let key = b.xattrs.keys().nth(which % b.xattrs.len()).unwrap().clone();
                    let ns = if key.0 {
                        XattrNs::Internal
                    } else {
                        XattrNs::User
                    };
                    store
                        .open_blob(blobstore::BlobId(id))?
                        .remove_xattr_ns(ns, &key.1)?;
                    b.xattrs.remove(&key);
                }
            }
        }
        Step::MoveX { from, to } => {
            // Like a rename between directories: remove here, add there, atomically.
            let (Some(a), Some(bid)) = (pick_id(model, *from), pick_id(model, *to)) else {
                return Ok(false);
            };
            let src = &model[&a];
            let dst = &model[&bid];
            let Some(key) = src.xattrs.keys().find(|k| k.0).cloned() else {
                return Ok(false);
            };
            if a == bid || src.flags & 2 != 0 || dst.flags & 2 != 0 {
                return Ok(false);
            }
            let value = src.xattrs[&key].clone();
            let newname = [key.1.clone(), b"m".to_vec()].concat();
            let mut t = store.transaction();
            t.remove_xattr(blobstore::BlobId(a), XattrNs::Internal, &key.1);
            t.set_xattr(blobstore::BlobId(bid), XattrNs::Internal, &newname, &value);
            t.commit()?;
            model.get_mut(&a).unwrap().xattrs.remove(&key);
            model
                .get_mut(&bid)
                .unwrap()
                .xattrs
                .insert((true, newname), value);
        }
        Step::TxnCreateDelete { pick, clusters } => {
            let victim = pick_id(model, *pick).filter(|v| children(model, *v).is_empty());
            let mut t = store.transaction();
            let id = t.create_blob(*clusters);
            let value = pattern(tag, 0, 40);
            t.set_xattr(id, XattrNs::Internal, b"born", &value);
            if let Some(v) = victim {
                t.delete_blob(blobstore::BlobId(v));
            }
            t.commit()?;
            if let Some(v) = victim {
                model.remove(&v);
            }
            let mut xattrs = BTreeMap::new();
            xattrs.insert((true, b"born".to_vec()), value);
            model.insert(
                id.0,
                MBlob {
                    flags: 1,
                    clusters: *clusters,
                    data: vec![0; (*clusters * cs) as usize],
                    xattrs,
                    parent: 0,
                },
            );
        }
        Step::ReadOnly { pick } => {
            if let Some(id) = pick_id(model, *pick) {
                store.open_blob(blobstore::BlobId(id))?.set_read_only()?;
                model.get_mut(&id).unwrap().flags |= 2;
            }
        }
        Step::Snapshot { pick } => {
            if let Some(id) = pick_id(model, *pick) {
                let snap = store.snapshot(blobstore::BlobId(id))?;
                let b = model.get_mut(&id).unwrap();
                let mut frozen = b.clone();
                frozen.flags = 1 | 2;
                b.flags |= 1;
                b.parent = snap.0;
                model.insert(snap.0, frozen);
            }
        }
        Step::Clone { pick } => {
            if let Some(id) = pick_id(model, *pick) {
                let b = &model[&id];
                if b.flags & 2 == 0 {
                    assert!(store.clone_blob(blobstore::BlobId(id)).is_err());
                    return Ok(false);
                }
                let mut c = b.clone();
                let cid = store.clone_blob(blobstore::BlobId(id))?;
                c.flags = 1;
                c.parent = id;
                model.insert(cid.0, c);
            }
        }
        Step::Inflate { pick } | Step::Decouple { pick } => {
            if let Some(id) = pick_id(model, *pick) {
                let parent = model[&id].parent;
                if parent == 0 || model[&id].flags & 2 != 0 {
                    return Ok(false);
                }
                let inflate = matches!(step, Step::Inflate { .. });
                let r = if inflate {
                    store.inflate(blobstore::BlobId(id))
                } else {
                    store.decouple_parent(blobstore::BlobId(id))
                };
                match r {
                    // Partly copied, still linked: the content is the same either way.
                    Err(Error::NoSpace(_)) => return Ok(false),
                    r => r?,
                }
                let grand = model[&parent].parent;
                model.get_mut(&id).unwrap().parent = if inflate { 0 } else { grand };
            }
        }
        Step::DeleteAbsorbed { pick } => {
            if let Some(id) = pick_id(model, *pick) {
                let kids = children(model, id);
                if kids.len() != 1 {
                    assert!(store.delete_absorbed(blobstore::BlobId(id)).is_err());
                    return Ok(false);
                }
                store.delete_absorbed(blobstore::BlobId(id))?;
                let grand = model[&id].parent;
                model.get_mut(&kids[0]).unwrap().parent = grand;
                model.remove(&id);
            }
        }
        Step::Sync => {
            store.sync()?;
            return Ok(true);
        }
        Step::Checkpoint => {
            store.checkpoint()?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// Reads the whole store back into a model.
fn read_model(store: &Blobstore, cs: u64) -> Result<Model, Error> {
    let mut ch = store.channel()?;
    let mut m = Model::new();
    for id in store.blob_ids() {
        let meta = store.blob_meta(id)?;
        let blob = store.open_blob(id)?;
        let mut data = vec![0u8; (meta.clusters.len() as u64 * cs) as usize];
        if !data.is_empty() {
            blob.read(&mut ch, 0, &mut data)?;
        }
        let mut xattrs = BTreeMap::new();
        for (k, v) in &meta.xattrs {
            xattrs.insert((false, k.clone()), v.clone());
        }
        for (k, v) in &meta.internal {
            xattrs.insert((true, k.clone()), v.clone());
        }
        m.insert(
            id.0,
            MBlob {
                flags: meta.flags,
                clusters: meta.clusters.len() as u64,
                data,
                xattrs,
                parent: meta.parent.0,
            },
        );
    }
    Ok(m)
}

struct Setup {
    base: MemDevice,
    opts: OpenOptions,
    cs: u64,
}

fn setup(p: &Profile) -> Setup {
    let base = MemDevice::new(MemOptions {
        capacity: p.capacity,
        lba_size: LBA as u32,
        ..MemOptions::default()
    })
    .unwrap();
    Blobstore::format(
        Arc::new(base.clone()),
        &FormatOptions {
            cluster_size: p.cluster,
            ..FormatOptions::default()
        },
    )
    .unwrap();
    Setup {
        base,
        opts: OpenOptions {
            checkpoint_bytes: p.checkpoint_bytes,
            // Checkpoints in the committing thread: the same I/O order in every run.
            background_checkpoint: false,
            ..OpenOptions::default()
        },
        cs: u64::from(p.cluster),
    }
}

/// Runs the steps on a copy of the base image with a crash after `cut` mutating commands
/// (never, if `None`). Returns the device, the number of steps that completed, and the
/// number of mutating commands issued.
fn run_once(s: &Setup, steps: &[Step], seed: u64, cut: Option<u64>) -> (MemDevice, usize, u64) {
    let mem = s.base.duplicate();
    let plan = FaultPlan::new(CountMode::Mutating, seed);
    if let Some(n) = cut {
        plan.crash_after(n);
    }
    let m2 = mem.clone();
    plan.on_crash(move || m2.kill());
    let dev = Arc::new(FaultDevice::new(Arc::new(mem.clone()), Arc::clone(&plan)));
    let store = Blobstore::open(dev, s.opts.clone()).expect("open base image");
    let mut ch = store.channel().unwrap();
    let mut model = Model::new();
    let mut done = 0;
    for (i, st) in steps.iter().enumerate() {
        if exec(
            st,
            (seed << 20) | i as u64,
            &store,
            &mut ch,
            &mut model,
            s.cs,
        )
        .is_err()
        {
            break;
        }
        done = i + 1;
    }
    (mem, done, plan.counted())
}

#[derive(Default)]
struct Tally {
    points: u64,
    lost: u64,
    inconsistent: u64,
    /// Snapshot/clone steps that changed the store in the reference runs (snapshot, clone,
    /// inflate, decouple, absorb), to show the sweep exercised them.
    clone_ops: [u64; 5],
}

fn sweep(p: &Profile, seeds: std::ops::Range<u64>, min_points: u64) -> Tally {
    let s = setup(p);
    let mut tally = Tally::default();
    for seed in seeds {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xC0FFEE);
        let steps: Vec<Step> = (0..p.steps).map(|_| make_step(&mut rng, p)).collect();
        // Reference run: model states after each step, and which steps were acks.
        let mut states = vec![Model::new()];
        let mut acks = vec![true];
        {
            let mem = s.base.duplicate();
            let store = Blobstore::open(Arc::new(mem.clone()), s.opts.clone()).unwrap();
            let mut ch = store.channel().unwrap();
            let mut model = Model::new();
            for (i, st) in steps.iter().enumerate() {
                let ack = exec(
                    st,
                    (seed << 20) | i as u64,
                    &store,
                    &mut ch,
                    &mut model,
                    s.cs,
                )
                .unwrap_or_else(|e| panic!("reference run, step {i} {st:?}: {e}"));
                let k = match st {
                    Step::Snapshot { .. } => Some(0),
                    Step::Clone { .. } => Some(1),
                    Step::Inflate { .. } => Some(2),
                    Step::Decouple { .. } => Some(3),
                    Step::DeleteAbsorbed { .. } => Some(4),
                    _ => None,
                };
                if let (Some(k), Some(prev)) = (k, states.last()) {
                    if *prev != model {
                        tally.clone_ops[k] += 1;
                    }
                }
                states.push(model.clone());
                acks.push(ack);
            }
            assert_eq!(
                read_model(&store, s.cs).unwrap(),
                model,
                "reference run state"
            );
        }
        let (_, done, total) = run_once(&s, &steps, seed, None);
        if std::env::var("PC_DEBUG").is_ok() {
            let last = states.last().unwrap();
            eprintln!(
                "{} seed {seed}: ios={total} blobs={} clusters={} acks={}",
                p.name,
                last.len(),
                last.values().map(|b| b.clusters).sum::<u64>(),
                acks.iter().filter(|a| **a).count()
            );
        }
        assert_eq!(done, steps.len());
        for n in 0..=total {
            let (mem, done, _) = run_once(&s, &steps, seed, Some(n));
            // States reachable: from the last acknowledged state to the one after the
            // step that was interrupted.
            let hi = (done + 1).min(steps.len());
            let lo = (0..=done).rev().find(|&i| acks[i]).unwrap_or(0);
            let policy = match n % 4 {
                0 => CutPolicy::DropAll,
                1 => CutPolicy::KeepAll,
                _ => CutPolicy::Random,
            };
            let mut crng = StdRng::seed_from_u64(seed * 1_000_003 + n);
            let img = mem.power_cut(policy, &mut crng);
            tally.points += 1;
            // fsck (read-only) on the crashed image, before anything opens it: clean.
            match blobstore::fsck::check_store(&(Arc::new(img.clone()) as Arc<dyn Device>)) {
                Ok(c) if c.is_clean() => {}
                Ok(c) => {
                    tally.inconsistent += 1;
                    eprintln!("{}: seed {seed} cut {n}: fsck: {:?}", p.name, c.findings);
                    continue;
                }
                Err(e) => {
                    tally.inconsistent += 1;
                    eprintln!("{}: seed {seed} cut {n}: fsck failed: {e}", p.name);
                    continue;
                }
            }
            let store = match Blobstore::open(Arc::new(img), s.opts.clone()) {
                Ok(st) => st,
                Err(e) => {
                    tally.inconsistent += 1;
                    eprintln!(
                        "{}: seed {seed} cut {n} ({policy:?}): load failed: {e}",
                        p.name
                    );
                    continue;
                }
            };
            match store.check() {
                Ok(r) if r.is_clean() => {}
                Ok(r) => {
                    tally.inconsistent += 1;
                    eprintln!("{}: seed {seed} cut {n}: check: {:?}", p.name, r.problems);
                    continue;
                }
                Err(e) => {
                    tally.inconsistent += 1;
                    eprintln!("{}: seed {seed} cut {n}: check failed: {e}", p.name);
                    continue;
                }
            }
            let got = read_model(&store, s.cs).unwrap();
            let window = &states[lo..=hi];
            let meta_ok = window.iter().any(|m| meta_of(m) == meta_of(&got));
            let data_ok = got.iter().all(|(id, b)| {
                b.data.chunks(LBA as usize).enumerate().all(|(u, unit)| {
                    let r = u * LBA as usize..(u + 1) * LBA as usize;
                    window.iter().any(|m| {
                        m.get(id)
                            .and_then(|mb| mb.data.get(r.clone()))
                            .is_some_and(|d| d == unit)
                    })
                })
            });
            if !meta_ok || !data_ok {
                tally.lost += 1;
                eprintln!(
                    "{}: seed {seed} cut {n} ({policy:?}): steps done {done}, window {lo}..={hi}: meta_ok={meta_ok} data_ok={data_ok}; steps {:?}",
                    p.name,
                    &steps[lo.saturating_sub(1)..hi.min(steps.len())]
                );
            }
        }
        if tally.points >= min_points {
            break;
        }
    }
    tally
}

fn report(p: &Profile, min_points: u64) {
    let t = sweep(p, 0..1000, min_points);
    let ops = if t.clone_ops.iter().any(|n| *n > 0) {
        let [s, c, i, d, a] = t.clone_ops;
        format!(" (snapshots={s} clones={c} inflates={i} decouples={d} absorbs={a})")
    } else {
        String::new()
    };
    println!(
        "power-cut: workload={} points={} lost={} inconsistent={}{ops}",
        p.name, t.points, t.lost, t.inconsistent
    );
    assert!(
        t.points >= min_points,
        "{}: only {} points",
        p.name,
        t.points
    );
    assert_eq!(t.lost, 0, "{}: acknowledged state lost", p.name);
    assert_eq!(t.inconsistent, 0, "{}: inconsistent after recovery", p.name);
}

// Cr Del Rsz Wr Unm Zer SetX RmX MvX Txn RO Sync Ckpt | Snap Clone Infl Dcpl Absorb
const W_BLOBDATA: [u32; 18] = [6, 2, 3, 10, 0, 0, 1, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0];
const W_XATTR: [u32; 18] = [3, 1, 0, 1, 0, 0, 8, 3, 6, 3, 0, 5, 0, 0, 0, 0, 0, 0];
const W_UNMAP: [u32; 18] = [3, 1, 1, 8, 4, 3, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0, 0, 0];
const W_CKPT: [u32; 18] = [3, 1, 1, 3, 1, 0, 6, 2, 2, 1, 0, 8, 2, 0, 0, 0, 0, 0];
const W_CLONES: [u32; 18] = [3, 2, 2, 8, 1, 1, 1, 0, 0, 1, 0, 5, 1, 3, 3, 1, 1, 2];
const W_MIXED: [u32; 18] = [4, 2, 2, 6, 2, 2, 3, 2, 2, 2, 1, 5, 1, 0, 0, 0, 0, 0];

#[test]
fn power_cut_blob_data() {
    report(
        &Profile {
            name: "blob-data",
            cluster: 16 * 1024,
            capacity: 512 << 10,
            checkpoint_bytes: None,
            steps: 200,
            weights: W_BLOBDATA,
        },
        3000,
    );
}

#[test]
fn power_cut_xattr_transactions() {
    report(
        &Profile {
            name: "xattr-txn",
            cluster: 16 * 1024,
            capacity: 512 << 10,
            checkpoint_bytes: None,
            steps: 200,
            weights: W_XATTR,
        },
        3000,
    );
}

#[test]
fn power_cut_unmap_zeroes() {
    report(
        &Profile {
            name: "unmap-zeroes",
            cluster: 16 * 1024,
            capacity: 512 << 10,
            checkpoint_bytes: None,
            steps: 200,
            weights: W_UNMAP,
        },
        3000,
    );
}

#[test]
fn power_cut_checkpoint_churn() {
    report(
        &Profile {
            name: "checkpoint-churn",
            cluster: 16 * 1024,
            capacity: 512 << 10,
            checkpoint_bytes: Some(48 * 1024),
            steps: 200,
            weights: W_CKPT,
        },
        3000,
    );
}

#[test]
fn power_cut_mixed() {
    report(
        &Profile {
            name: "mixed",
            cluster: 16 * 1024,
            capacity: 512 << 10,
            checkpoint_bytes: Some(96 * 1024),
            steps: 200,
            weights: W_MIXED,
        },
        3000,
    );
}

#[test]
fn power_cut_snapshots_and_clones() {
    report(
        &Profile {
            name: "snapshot-clone",
            cluster: 16 * 1024,
            capacity: 1 << 20,
            checkpoint_bytes: Some(96 * 1024),
            steps: 200,
            weights: W_CLONES,
        },
        3000,
    );
}

/// Several threads commit concurrently (group commit) while the power is cut at a random
/// command: every value a thread saw acknowledged must survive, and no value it never wrote
/// may appear.
///
/// A leader whose commit fails takes the queued records with it and turns the store
/// read-only; a thread that became leader just after once found nothing to write and acked
/// everything (regression: `lead_commit` checks the store is writable under the committer).
#[test]
fn power_cut_concurrent_group_commit() {
    // Here checkpoints run on the background thread, racing with the commits.
    group_commit_sweep("group-commit", true);
}

/// The same with checkpoints written inline by the committing leader.
#[test]
fn power_cut_concurrent_group_commit_inline_checkpoints() {
    group_commit_sweep("group-commit-inline", false);
}

fn group_commit_sweep(name: &'static str, background: bool) {
    let p = Profile {
        name,
        cluster: 16 * 1024,
        capacity: 4 << 20,
        checkpoint_bytes: Some(64 * 1024),
        steps: 0,
        weights: W_MIXED,
    };
    let mut s = setup(&p);
    s.opts.background_checkpoint = background;
    let threads = 4usize;
    let mut tally = Tally::default();
    let mut rng = StdRng::seed_from_u64(99);
    for run in 0..300u64 {
        let mem = s.base.duplicate();
        let plan = FaultPlan::new(CountMode::Mutating, run);
        plan.crash_after(rng.gen_range(5..400));
        let m2 = mem.clone();
        plan.on_crash(move || m2.kill());
        let dev = Arc::new(FaultDevice::new(Arc::new(mem.clone()), Arc::clone(&plan)));
        let store = Blobstore::open(dev, s.opts.clone()).unwrap();
        let ids: Vec<_> = (0..threads)
            .map(|_| store.create_blob(BlobOptions::default()).unwrap())
            .collect();
        // (last acknowledged, last attempted) per thread; None until the blobs are durable.
        let created = store.sync().is_ok();
        let results: Vec<(Option<u64>, u64)> = std::thread::scope(|sc| {
            let hs: Vec<_> = ids
                .iter()
                .map(|id| {
                    let store = store.clone();
                    let id = *id;
                    sc.spawn(move || {
                        let mut acked = None;
                        let mut attempted = 0;
                        if !created {
                            return (acked, attempted);
                        }
                        let Ok(b) = store.open_blob(id) else {
                            return (acked, attempted);
                        };
                        for i in 1..200u64 {
                            attempted = i;
                            if b.set_xattr(b"v", &i.to_le_bytes()).is_err() || b.sync().is_err() {
                                break;
                            }
                            acked = Some(i);
                        }
                        (acked, attempted)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        drop(store);
        let policy = [CutPolicy::DropAll, CutPolicy::KeepAll, CutPolicy::Random][run as usize % 3];
        let img = mem.power_cut(policy, &mut rng);
        tally.points += 1;
        let store = match Blobstore::open(Arc::new(img), s.opts.clone()) {
            Ok(st) => st,
            Err(e) => {
                tally.inconsistent += 1;
                eprintln!("{name} run {run}: load failed: {e}");
                continue;
            }
        };
        if !store.check().map(|r| r.is_clean()).unwrap_or(false) {
            tally.inconsistent += 1;
            continue;
        }
        for (id, (acked, attempted)) in ids.iter().zip(&results) {
            let got = store
                .blob_meta(*id)
                .ok()
                .and_then(|m| m.xattrs.get(&b"v"[..]).cloned())
                .map(|v| u64::from_le_bytes(v.try_into().unwrap_or([0; 8])));
            let ok = match (created, acked, got) {
                (false, _, _) => true,
                (true, None, None) => true,
                (true, None, Some(g)) => g >= 1 && g <= *attempted,
                (true, Some(a), Some(g)) => g >= *a && g <= *attempted,
                (true, Some(_), None) => false,
            };
            if !ok {
                tally.lost += 1;
                eprintln!(
                    "{name} run {run}: acked {acked:?} attempted {attempted} got {got:?} \
                     policy {policy:?} tail {:?}",
                    store.tail()
                );
            }
        }
    }
    println!(
        "power-cut: workload={} points={} lost={} inconsistent={}",
        p.name, tally.points, tally.lost, tally.inconsistent
    );
    assert_eq!(tally.lost, 0);
    assert_eq!(tally.inconsistent, 0);
}

// ------------------------------------------------------------------ checked appends
//
// Appends committed with one flush each (`set_xattr_ns_checked`: the new size and a
// DataCheck over the new bytes, no data pre-flush), and overwrites of acknowledged bytes
// after `confirm()` when the thread's last checked group may still be the log's last.
// After a cut: every acknowledged size is there (or the size of the append in flight, with
// its bytes), and every byte below the size is one that was written (an overwrite in flight
// may have landed per I/O unit), never garbage.

/// What one appending thread did: enough to judge any image a cut can leave.
#[derive(Clone, Debug, Default)]
struct Appender {
    /// Size acknowledged (its sync returned), and the contents below it as acknowledged.
    acked: u64,
    acked_data: Vec<u8>,
    /// The step in flight when the run stopped, if it was writing.
    inflight: Option<InFlight>,
    appends: u64,
    overwrites: u64,
    confirms: u64,
}

#[derive(Clone, Debug)]
enum InFlight {
    /// Size `new`, with the bytes `[acked, new)`.
    Append { new: u64, bytes: Vec<u8> },
    /// Bytes at `at` (I/O-unit aligned, below the acknowledged size).
    Overwrite { at: u64, bytes: Vec<u8> },
}

const SIZE_KEY: &[u8] = b"size";

/// Appends and overwrites on blob `id` until `steps` are done or something fails.
fn checked_appender(
    store: &Blobstore,
    id: blobstore::BlobId,
    seed: u64,
    steps: usize,
    out: &mut Appender,
) -> Result<(), Error> {
    let mut rng = StdRng::seed_from_u64(seed);
    let blob = store.open_blob(id)?;
    let mut ch = store.channel()?;
    let cap = blob.size();
    out.acked_data = vec![0; cap as usize];
    // groups_committed() right after the last checked sync returned.
    let mut mark: Option<u64> = None;
    for step in 0..steps {
        let tag = (seed << 16) | step as u64;
        let acked = out.acked;
        let aligned_acked = acked / LBA * LBA;
        if aligned_acked >= LBA && rng.gen_bool(0.25) {
            // Overwrite acknowledged bytes. Our last checked group may still be the log's
            // last: make a later group durable first, or replay would find these bytes
            // changed and discard that acknowledged group.
            if mark.is_some_and(|g| store.groups_committed() <= g) {
                store.confirm()?;
                out.confirms += 1;
            }
            let units = aligned_acked / LBA;
            let first = rng.gen_range(0..units);
            let n = rng.gen_range(1..=(units - first).min(8));
            let at = first * LBA;
            let bytes = pattern(tag | 1 << 62, at, (n * LBA) as usize);
            out.inflight = Some(InFlight::Overwrite {
                at,
                bytes: bytes.clone(),
            });
            blob.write(&mut ch, at, &bytes)?;
            store.sync()?;
            out.acked_data[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
            out.inflight = None;
            out.overwrites += 1;
            continue;
        }
        let n = rng.gen_range(1..2500u64);
        let new = acked + n;
        if new > cap {
            break;
        }
        let bytes = pattern(tag, acked, n as usize);
        // Whole I/O units: the partial unit at the old end is rewritten with the same bytes.
        let a0 = aligned_acked;
        let a1 = new.div_ceil(LBA) * LBA;
        let mut buf = vec![0u8; (a1 - a0) as usize];
        buf[..(acked - a0) as usize].copy_from_slice(&out.acked_data[a0 as usize..acked as usize]);
        buf[(acked - a0) as usize..(new - a0) as usize].copy_from_slice(&bytes);
        out.inflight = Some(InFlight::Append {
            new,
            bytes: bytes.clone(),
        });
        blob.write(&mut ch, a0, &buf)?;
        let crc = blobstore::format::record::data_crc(&bytes);
        blob.set_xattr_ns_checked(
            XattrNs::Internal,
            SIZE_KEY,
            &new.to_le_bytes(),
            &[(acked, n, crc)],
        )?;
        store.sync()?;
        mark = Some(store.groups_committed());
        out.acked_data[acked as usize..new as usize].copy_from_slice(&bytes);
        out.acked = new;
        out.inflight = None;
        out.appends += 1;
    }
    Ok(())
}

/// Judges blob `id` of a reloaded store against what its appender did.
fn judge_appender(store: &Blobstore, id: blobstore::BlobId, a: &Appender) -> Result<(), String> {
    let meta = store.blob_meta(id).map_err(|e| format!("blob {id}: {e}"))?;
    let got = match meta.internal.get(SIZE_KEY) {
        None => 0,
        Some(v) => u64::from_le_bytes(
            v.as_slice()
                .try_into()
                .map_err(|_| format!("size xattr {v:?}"))?,
        ),
    };
    let mut expect = a.acked_data.clone();
    // Per I/O unit, the other value a unit may hold (an overwrite in flight).
    let mut alt: Option<(u64, Vec<u8>)> = None;
    match &a.inflight {
        _ if got == a.acked => {}
        Some(InFlight::Append { new, bytes }) if got == *new => {
            expect[a.acked as usize..*new as usize].copy_from_slice(bytes);
        }
        _ => {
            return Err(format!(
                "size {got}, acknowledged {}, in flight {:?}",
                a.acked,
                a.inflight.as_ref().map(|f| match f {
                    InFlight::Append { new, .. } => format!("append to {new}"),
                    InFlight::Overwrite { at, bytes } => format!("overwrite {at}+{}", bytes.len()),
                })
            ))
        }
    }
    if let Some(InFlight::Overwrite { at, bytes }) = &a.inflight {
        alt = Some((*at, bytes.clone()));
    }
    if got == 0 {
        return Ok(());
    }
    let blob = store.open_blob(id).map_err(|e| e.to_string())?;
    let mut ch = store.channel().map_err(|e| e.to_string())?;
    let mut data = vec![0u8; got.div_ceil(LBA) as usize * LBA as usize];
    blob.read(&mut ch, 0, &mut data)
        .map_err(|e| e.to_string())?;
    for (u, unit) in data.chunks(LBA as usize).enumerate() {
        let lo = u * LBA as usize;
        let hi = (lo + LBA as usize).min(got as usize);
        let have = &unit[..hi - lo];
        if have == &expect[lo..hi] {
            continue;
        }
        let alt_ok = alt.as_ref().is_some_and(|(at, bytes)| {
            let at = *at as usize;
            lo >= at && hi <= at + bytes.len() && have == &bytes[lo - at..hi - at]
        });
        if !alt_ok {
            return Err(format!(
                "size {got}: bytes {lo}..{hi} are neither what was acknowledged nor in flight"
            ));
        }
    }
    Ok(())
}

fn checked_setup(background: bool) -> Setup {
    let mut s = setup(&Profile {
        name: "checked-appends",
        cluster: 16 * 1024,
        capacity: 4 << 20,
        checkpoint_bytes: Some(32 * 1024),
        steps: 0,
        weights: W_MIXED,
    });
    s.opts.background_checkpoint = background;
    s
}

/// Creates the blobs (thin and thick, 8 clusters each) and makes them durable.
fn checked_blobs(store: &Blobstore, n: usize) -> Result<Vec<blobstore::BlobId>, Error> {
    let ids = (0..n)
        .map(|i| {
            store.create_blob(BlobOptions {
                thin: i % 2 == 0,
                clusters: 8,
                ..Default::default()
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    store.sync()?;
    Ok(ids)
}

/// Loads a crashed image and judges it: fsck clean, load, check clean, every appender's
/// blob. Returns (lost, inconsistent) as 0/1 each.
fn judge_image(
    name: &str,
    what: &str,
    img: MemDevice,
    opts: &OpenOptions,
    blobs: Option<&[blobstore::BlobId]>,
    appenders: &[Appender],
) -> (u64, u64) {
    match blobstore::fsck::check_store(&(Arc::new(img.clone()) as Arc<dyn Device>)) {
        Ok(c) if c.is_clean() => {}
        Ok(c) => {
            eprintln!("{name} {what}: fsck: {:?}", c.findings);
            return (0, 1);
        }
        Err(e) => {
            eprintln!("{name} {what}: fsck failed: {e}");
            return (0, 1);
        }
    }
    let store = match Blobstore::open(Arc::new(img), opts.clone()) {
        Ok(st) => st,
        Err(e) => {
            eprintln!("{name} {what}: load failed: {e}");
            return (0, 1);
        }
    };
    match store.check() {
        Ok(r) if r.is_clean() => {}
        Ok(r) => {
            eprintln!("{name} {what}: check: {:?}", r.problems);
            return (0, 1);
        }
        Err(e) => {
            eprintln!("{name} {what}: check failed: {e}");
            return (0, 1);
        }
    }
    let Some(ids) = blobs else {
        return (0, 0);
    };
    let mut lost = 0;
    for (id, a) in ids.iter().zip(appenders) {
        if let Err(e) = judge_appender(&store, *id, a) {
            eprintln!(
                "{name} {what}: blob {id}: {e} (tail {:?}, replay {:?})",
                store.tail(),
                store.info().replay
            );
            lost = 1;
        }
    }
    (lost, 0)
}

/// Several threads append (and overwrite) concurrently; the power is cut at a random
/// command. Group commits mix the threads' checked groups; checkpoints run inline or on
/// the background thread.
#[test]
fn power_cut_checked_appends() {
    let name = "checked-appends";
    let threads = 3usize;
    let mut tally = Tally::default();
    let (mut appends, mut overwrites, mut confirms, mut crashed) = (0u64, 0u64, 0u64, 0u64);
    let mut rng = StdRng::seed_from_u64(0xA99E);
    let setups = [checked_setup(false), checked_setup(true)];
    for run in 0..1200u64 {
        let s = &setups[run as usize % 2];
        let mem = s.base.duplicate();
        let plan = FaultPlan::new(CountMode::Mutating, run);
        plan.crash_after(rng.gen_range(3..700));
        let m2 = mem.clone();
        plan.on_crash(move || m2.kill());
        let dev = Arc::new(FaultDevice::new(Arc::new(mem.clone()), Arc::clone(&plan)));
        let store = Blobstore::open(dev, s.opts.clone()).unwrap();
        assert!(store.supports_data_checks());
        let blobs = checked_blobs(&store, threads).ok();
        let results: Vec<Appender> = match &blobs {
            None => Vec::new(),
            Some(ids) => std::thread::scope(|sc| {
                let hs: Vec<_> = ids
                    .iter()
                    .enumerate()
                    .map(|(t, id)| {
                        let store = store.clone();
                        let id = *id;
                        sc.spawn(move || {
                            let mut a = Appender::default();
                            let _ = checked_appender(&store, id, run * 8 + t as u64, 60, &mut a);
                            a
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            }),
        };
        drop(store);
        crashed += u64::from(plan.crashed());
        for a in &results {
            appends += a.appends;
            overwrites += a.overwrites;
            confirms += a.confirms;
        }
        let policy = [CutPolicy::DropAll, CutPolicy::KeepAll, CutPolicy::Random][run as usize % 3];
        let img = mem.power_cut(policy, &mut rng);
        tally.points += 1;
        let what = format!("run {run} ({policy:?})");
        let (l, i) = judge_image(name, &what, img, &s.opts, blobs.as_deref(), &results);
        tally.lost += l;
        tally.inconsistent += i;
    }
    println!(
        "power-cut: workload={name} points={} lost={} inconsistent={} \
         (cut during the run={crashed}, acked appends={appends} overwrites={overwrites} \
         confirms={confirms})",
        tally.points, tally.lost, tally.inconsistent
    );
    assert!(tally.points >= 1000);
    assert!(
        crashed >= tally.points * 3 / 4,
        "too few runs were cut: {crashed}"
    );
    assert!(appends > 10_000 && overwrites > 1000 && confirms > 500);
    assert_eq!(
        tally.lost, 0,
        "{name}: acknowledged data lost or garbage exposed"
    );
    assert_eq!(tally.inconsistent, 0, "{name}: inconsistent after recovery");
}

/// One appender, the power cut after every mutating command in turn (the deterministic
/// sweep): every cut between a checked group's write and its flush is met, with the data
/// and the group each dropped, kept or torn.
#[test]
fn power_cut_checked_appends_every_point() {
    let name = "checked-appends-sweep";
    let s = checked_setup(false);
    let mut tally = Tally::default();
    let mut discarded = 0u64;
    for seed in 0..100u64 {
        let run = |cut: Option<u64>| {
            let mem = s.base.duplicate();
            let plan = FaultPlan::new(CountMode::Mutating, seed);
            if let Some(n) = cut {
                plan.crash_after(n);
            }
            let m2 = mem.clone();
            plan.on_crash(move || m2.kill());
            let dev = Arc::new(FaultDevice::new(Arc::new(mem.clone()), Arc::clone(&plan)));
            let store = Blobstore::open(dev, s.opts.clone()).unwrap();
            let mut a = Appender::default();
            let blobs = checked_blobs(&store, 2).ok();
            if let Some(ids) = &blobs {
                // Two blobs, one thread: alternate steps between them.
                let mut b = Appender::default();
                let _ = checked_appender(&store, ids[0], seed * 2, 25, &mut a)
                    .and_then(|()| checked_appender(&store, ids[1], seed * 2 + 1, 25, &mut b));
                return (mem, blobs, vec![a, b], plan.counted());
            }
            (mem, blobs, Vec::new(), plan.counted())
        };
        let (_, _, full, total) = run(None);
        assert!(full.iter().all(|a| a.inflight.is_none()));
        for n in 0..=total {
            let (mem, blobs, results, _) = run(Some(n));
            let policy = match n % 4 {
                0 => CutPolicy::DropAll,
                1 => CutPolicy::KeepAll,
                _ => CutPolicy::Random,
            };
            let mut crng = StdRng::seed_from_u64(seed * 1_000_003 + n);
            let img = mem.power_cut(policy, &mut crng);
            if let Ok(st) = Blobstore::open(
                Arc::new(img.duplicate()),
                OpenOptions {
                    read_only: true,
                    ..s.opts.clone()
                },
            ) {
                discarded += st.info().replay.discarded_checked_groups;
            }
            tally.points += 1;
            let what = format!("seed {seed} cut {n} ({policy:?})");
            let (l, i) = judge_image(name, &what, img, &s.opts, blobs.as_deref(), &results);
            tally.lost += l;
            tally.inconsistent += i;
        }
        if tally.points >= 3000 {
            break;
        }
    }
    println!(
        "power-cut: workload={name} points={} lost={} inconsistent={} (checked groups discarded={discarded})",
        tally.points, tally.lost, tally.inconsistent
    );
    assert!(tally.points >= 3000);
    // The sweep must meet the case the checks exist for.
    assert!(
        discarded > 0,
        "no cut left a checked group without its data"
    );
    assert_eq!(
        tally.lost, 0,
        "{name}: acknowledged data lost or garbage exposed"
    );
    assert_eq!(tally.inconsistent, 0, "{name}: inconsistent after recovery");
}
