//! Power-cut sweeps of filesystem workloads (create, write, fsync, rename, unlink, link,
//! mkdir, truncate) on the in-memory device: cut the power after mutating command N for
//! every N, drop/keep/tear unflushed writes, remount, and check:
//!
//! - the filesystem mounts and its check (namespace walk + blobstore check) is clean;
//! - the namespace equals the model's at some step between the last acknowledged commit
//!   (fsync or sync of anything) and the cut: acknowledged changes are there, every rename
//!   is atomic (old name or new, never both or neither);
//! - every file whose fsync was acknowledged and which was not changed afterwards has
//!   exactly its fsynced content;
//! - no file shows bytes that are not its own (every page is zero or a page the file held
//!   at some point).
//!
//! One line per workload: `power-cut: workload=NAME points=N lost=0 inconsistent=0`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use blobfs::{FileSystem, FsOptions, Ino, Kind, RenameFlags, SetAttr, ROOT_INO};
use blobstore::OpenOptions;
use driver::fault::{CountMode, FaultDevice, FaultPlan};
use driver::mem::{CutPolicy, MemDevice, MemOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(Clone, Debug)]
enum Step {
    Create {
        dir: usize,
        name: u8,
    },
    Mkdir {
        dir: usize,
        name: u8,
    },
    Write {
        file: usize,
        off: u64,
        len: usize,
    },
    /// A write at the file's end (the one-flush checked fsync path).
    Append {
        file: usize,
        len: usize,
    },
    Truncate {
        file: usize,
        size: u64,
    },
    Fsync {
        file: usize,
    },
    Sync,
    Rename {
        src: usize,
        dir: usize,
        name: u8,
    },
    Unlink {
        file: usize,
    },
    Link {
        file: usize,
        dir: usize,
        name: u8,
    },
    Rmdir {
        dir: usize,
    },
}

/// The namespace: directory -> name -> (ino, kind); and file contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    dirs: BTreeMap<Ino, BTreeMap<Vec<u8>, (Ino, Kind)>>,
    files: BTreeMap<Ino, Vec<u8>>,
}

impl Model {
    fn new() -> Model {
        let mut m = Model::default();
        m.dirs.insert(ROOT_INO, BTreeMap::new());
        m
    }

    /// Every (dir, name) -> ino entry whose target is a regular file.
    fn file_entries(&self) -> Vec<(Ino, Vec<u8>, Ino)> {
        let mut v = Vec::new();
        for (d, es) in &self.dirs {
            for (n, (i, k)) in es {
                if *k == Kind::File {
                    v.push((*d, n.clone(), *i));
                }
            }
        }
        v
    }

    fn dir_list(&self) -> Vec<Ino> {
        self.dirs.keys().copied().collect()
    }

    fn namespace(&self) -> &BTreeMap<Ino, BTreeMap<Vec<u8>, (Ino, Kind)>> {
        &self.dirs
    }

    fn links(&self, ino: Ino) -> usize {
        self.dirs
            .values()
            .flat_map(|es| es.values())
            .filter(|(i, _)| *i == ino)
            .count()
    }

    fn is_under(&self, dir: Ino, anc: Ino) -> bool {
        // Walk up by searching parents (small models).
        let mut cur = dir;
        for _ in 0..64 {
            if cur == anc {
                return true;
            }
            if cur == ROOT_INO {
                return false;
            }
            match self
                .dirs
                .iter()
                .find(|(_, es)| es.values().any(|(i, k)| *i == cur && *k == Kind::Dir))
            {
                Some((p, _)) => cur = *p,
                None => return false,
            }
        }
        false
    }
}

fn pattern(tag: u64, off: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = (tag.wrapping_mul(0x9e37_79b9_7f4a_7c15)) ^ ((off + i) / 8);
            (x >> (((off + i) % 8) * 8)) as u8
        })
        .collect()
}

fn make_step(rng: &mut StdRng, weights: &[u32; 10], append_pct: u32) -> Step {
    let total: u32 = weights.iter().sum();
    let mut x = rng.gen_range(0..total);
    let mut kind = 0;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            kind = i;
            break;
        }
        x -= w;
    }
    let p = rng.gen_range(0..64usize);
    let q = rng.gen_range(0..64usize);
    let name = rng.gen_range(0..12u8);
    match kind {
        0 => Step::Create { dir: p, name },
        1 => Step::Mkdir { dir: p, name },
        2 if append_pct > 0 && rng.gen_range(0..100) < append_pct => Step::Append {
            file: p,
            len: rng.gen_range(1..3000),
        },
        2 => Step::Write {
            file: p,
            off: rng.gen_range(0..40_000),
            len: rng.gen_range(1..20_000),
        },
        3 => Step::Truncate {
            file: p,
            size: rng.gen_range(0..30_000),
        },
        4 => Step::Fsync { file: p },
        5 => Step::Sync,
        6 => Step::Rename {
            src: p,
            dir: q,
            name,
        },
        7 => Step::Unlink { file: p },
        8 => Step::Link {
            file: p,
            dir: q,
            name,
        },
        _ => Step::Rmdir { dir: p },
    }
}

/// What a step did that the checker needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    None,
    /// A commit was acknowledged.
    Ack,
    /// A file's fsync was acknowledged (also a commit).
    Fsync(Ino),
    /// A file's content changed.
    Changed(Ino),
}

fn nm(n: u8) -> Vec<u8> {
    format!("n{n}").into_bytes()
}

/// Runs one step on the filesystem and the model. Steps that do not apply to the current
/// model (nothing to pick, a name taken) do nothing.
fn exec(step: &Step, tag: u64, fs: &FileSystem, m: &mut Model) -> Result<Effect, blobfs::Error> {
    let dirs = m.dir_list();
    let files = m.file_entries();
    match step {
        Step::Create { dir, name } => {
            let d = dirs[dir % dirs.len()];
            if m.dirs[&d].contains_key(&nm(*name)) {
                return Ok(Effect::None);
            }
            let a = fs.create(d, &nm(*name), 0o644, 0, 0)?;
            m.dirs
                .get_mut(&d)
                .unwrap()
                .insert(nm(*name), (a.ino, Kind::File));
            m.files.insert(a.ino, Vec::new());
        }
        Step::Mkdir { dir, name } => {
            let d = dirs[dir % dirs.len()];
            if m.dirs[&d].contains_key(&nm(*name)) || m.dirs.len() > 8 {
                return Ok(Effect::None);
            }
            let a = fs.mkdir(d, &nm(*name), 0o755, 0, 0)?;
            m.dirs
                .get_mut(&d)
                .unwrap()
                .insert(nm(*name), (a.ino, Kind::Dir));
            m.dirs.insert(a.ino, BTreeMap::new());
        }
        Step::Write { file, off, len } => {
            let Some((_, _, ino)) = files.get(file % files.len().max(1)).cloned() else {
                return Ok(Effect::None);
            };
            let data = pattern(tag, *off, *len);
            fs.write(ino, *off, &data)?;
            let c = m.files.get_mut(&ino).unwrap();
            let end = *off as usize + len;
            if c.len() < end {
                c.resize(end, 0);
            }
            c[*off as usize..end].copy_from_slice(&data);
            return Ok(Effect::Changed(ino));
        }
        Step::Append { file, len } => {
            let Some((_, _, ino)) = files.get(file % files.len().max(1)).cloned() else {
                return Ok(Effect::None);
            };
            let c = m.files.get_mut(&ino).unwrap();
            let off = c.len() as u64;
            let data = pattern(tag, off, *len);
            fs.write(ino, off, &data)?;
            c.extend_from_slice(&data);
            return Ok(Effect::Changed(ino));
        }
        Step::Truncate { file, size } => {
            let Some((_, _, ino)) = files.get(file % files.len().max(1)).cloned() else {
                return Ok(Effect::None);
            };
            fs.setattr(
                ino,
                SetAttr {
                    size: Some(*size),
                    ..Default::default()
                },
            )?;
            m.files.get_mut(&ino).unwrap().resize(*size as usize, 0);
            return Ok(Effect::Changed(ino));
        }
        Step::Fsync { file } => {
            let Some((_, _, ino)) = files.get(file % files.len().max(1)).cloned() else {
                return Ok(Effect::None);
            };
            fs.fsync(ino)?;
            return Ok(Effect::Fsync(ino));
        }
        Step::Sync => {
            fs.sync_all()?;
            return Ok(Effect::Ack);
        }
        Step::Rename { src, dir, name } => {
            // Source: any entry (file or directory).
            let all: Vec<(Ino, Vec<u8>, Ino, Kind)> = m
                .dirs
                .iter()
                .flat_map(|(d, es)| es.iter().map(move |(n, (i, k))| (*d, n.clone(), *i, *k)))
                .collect();
            let Some((sd, sn, sino, skind)) = all.get(src % all.len().max(1)).cloned() else {
                return Ok(Effect::None);
            };
            let dd = dirs[dir % dirs.len()];
            let dn = nm(*name);
            if skind == Kind::Dir && m.is_under(dd, sino) {
                return Ok(Effect::None);
            }
            let target = m.dirs[&dd].get(&dn).copied();
            if let Some((tino, tkind)) = target {
                if tino == sino
                    || (tkind == Kind::Dir) != (skind == Kind::Dir)
                    || (tkind == Kind::Dir && !m.dirs[&tino].is_empty())
                {
                    return Ok(Effect::None);
                }
            }
            fs.rename(sd, &sn, dd, &dn, RenameFlags::default())?;
            m.dirs.get_mut(&sd).unwrap().remove(&sn);
            m.dirs.get_mut(&dd).unwrap().insert(dn, (sino, skind));
            if let Some((tino, tkind)) = target {
                if tkind == Kind::Dir {
                    m.dirs.remove(&tino);
                } else if m.links(tino) == 0 {
                    m.files.remove(&tino);
                }
            }
        }
        Step::Unlink { file } => {
            let Some((d, n, ino)) = files.get(file % files.len().max(1)).cloned() else {
                return Ok(Effect::None);
            };
            fs.unlink(d, &n)?;
            m.dirs.get_mut(&d).unwrap().remove(&n);
            if m.links(ino) == 0 {
                m.files.remove(&ino);
            }
        }
        Step::Link { file, dir, name } => {
            let Some((_, _, ino)) = files.get(file % files.len().max(1)).cloned() else {
                return Ok(Effect::None);
            };
            let dd = dirs[dir % dirs.len()];
            if m.dirs[&dd].contains_key(&nm(*name)) {
                return Ok(Effect::None);
            }
            fs.link(ino, dd, &nm(*name))?;
            m.dirs
                .get_mut(&dd)
                .unwrap()
                .insert(nm(*name), (ino, Kind::File));
        }
        Step::Rmdir { dir } => {
            let cands: Vec<(Ino, Vec<u8>, Ino)> = m
                .dirs
                .iter()
                .flat_map(|(d, es)| {
                    es.iter()
                        .filter(|(_, (_, k))| *k == Kind::Dir)
                        .map(move |(n, (i, _))| (*d, n.clone(), *i))
                })
                .filter(|(_, _, i)| m.dirs[i].is_empty())
                .collect();
            let Some((d, n, ino)) = cands.get(dir % cands.len().max(1)).cloned() else {
                return Ok(Effect::None);
            };
            fs.rmdir(d, &n)?;
            m.dirs.get_mut(&d).unwrap().remove(&n);
            m.dirs.remove(&ino);
        }
    }
    Ok(Effect::None)
}

/// Reads the whole filesystem back into a model.
fn read_back(fs: &FileSystem) -> Result<Model, blobfs::Error> {
    let mut m = Model::default();
    let mut queue = vec![ROOT_INO];
    let mut seen = BTreeSet::new();
    while let Some(d) = queue.pop() {
        if !seen.insert(d) {
            continue;
        }
        let mut es = BTreeMap::new();
        for e in fs.readdir(d)? {
            if e.kind == Kind::Dir {
                queue.push(e.ino);
            } else if let std::collections::btree_map::Entry::Vacant(v) = m.files.entry(e.ino) {
                let size = fs.getattr(e.ino)?.size;
                v.insert(fs.read(e.ino, 0, size as usize)?);
            }
            es.insert(e.name, (e.ino, e.kind));
        }
        m.dirs.insert(d, es);
    }
    Ok(m)
}

/// Whether `unit` equals bytes `r` of a file state `c`, reading past its end as zeroes
/// (a write can land on the device while the size that covers it does not).
fn same_unit(c: &[u8], r: &std::ops::Range<usize>, unit: &[u8]) -> bool {
    unit.iter()
        .enumerate()
        .all(|(i, b)| c.get(r.start + i).copied().unwrap_or(0) == *b)
}

/// What `blobfs fsck -n` would report as errors for an image (store and filesystem).
fn fsck(img: &MemDevice) -> Vec<String> {
    let dev: Arc<dyn driver::Device> = Arc::new(img.clone());
    let c = match blobstore::fsck::check_store(&dev) {
        Ok(c) => c,
        Err(e) => return vec![format!("check_store: {e}")],
    };
    let mut errs: Vec<String> = c
        .findings
        .iter()
        .map(|f| format!("{}: {}", f.kind, f.detail))
        .collect();
    let Some(r) = c.replayed else {
        errs.push(format!("no state: {:?}", c.fatal));
        return errs;
    };
    let qp = dev.open_qpair(8).unwrap();
    let store = blobstore::Blobstore::from_replayed(
        Arc::clone(&dev),
        OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
        qp,
        r,
    )
    .unwrap();
    match blobfs::check_fs(&store) {
        Ok(fc) => errs.extend(fc.problems),
        Err(e) => errs.push(format!("check_fs: {e}")),
    }
    errs
}

struct Profile {
    name: &'static str,
    steps: usize,
    weights: [u32; 10],
    checkpoint_bytes: Option<u64>,
    /// Percent of writes that append at the file's end.
    append_pct: u32,
}

fn fs_opts(p: &Profile) -> FsOptions {
    FsOptions {
        sync_interval: None,
        file_dirty_limit: 16 * 1024,
        store: OpenOptions {
            checkpoint_bytes: p.checkpoint_bytes,
            background_checkpoint: false,
            ..OpenOptions::default()
        },
        ..FsOptions::default()
    }
}

#[derive(Default)]
struct Tally {
    points: u64,
    lost: u64,
    inconsistent: u64,
    /// Recoveries that found the log's last group checked and its data not there (so
    /// discarded it): proof the one-flush path and its replay rule were exercised.
    discarded: u64,
}

fn sweep(p: &Profile, min_points: u64) -> Tally {
    let base = MemDevice::new(MemOptions {
        capacity: 4 << 20,
        lba_size: 512,
        ..MemOptions::default()
    })
    .unwrap();
    FileSystem::format(
        Arc::new(base.clone()),
        &blobstore::FormatOptions {
            cluster_size: 16 * 1024,
            ..Default::default()
        },
    )
    .unwrap();
    let mut tally = Tally::default();
    for seed in 0..10_000u64 {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xF5);
        let steps: Vec<Step> = (0..p.steps)
            .map(|_| make_step(&mut rng, &p.weights, p.append_pct))
            .collect();
        // Reference run.
        let mut states = vec![Model::new()];
        let mut effects = vec![Effect::Ack];
        let total = {
            let mem = base.duplicate();
            let plan = FaultPlan::new(CountMode::Mutating, seed);
            let dev = Arc::new(FaultDevice::new(Arc::new(mem.clone()), Arc::clone(&plan)));
            let fs = FileSystem::open(dev, fs_opts(p)).unwrap();
            let mut m = Model::new();
            for (i, st) in steps.iter().enumerate() {
                let e = exec(st, (seed << 16) | i as u64, &fs, &mut m)
                    .unwrap_or_else(|e| panic!("{}: reference step {i} {st:?}: {e}", p.name));
                states.push(m.clone());
                effects.push(e);
            }
            let back = read_back(&fs).unwrap();
            assert_eq!(back, m, "{}: reference run differs from the model", p.name);
            plan.counted()
        };
        for n in 0..=total {
            tally.points += 1;
            let mem = base.duplicate();
            let plan = FaultPlan::new(CountMode::Mutating, seed);
            plan.crash_after(n);
            let m2 = mem.clone();
            plan.on_crash(move || m2.kill());
            let dev = Arc::new(FaultDevice::new(Arc::new(mem.clone()), Arc::clone(&plan)));
            let fs = FileSystem::open(dev, fs_opts(p)).unwrap();
            let mut m = Model::new();
            let mut done = 0;
            for (i, st) in steps.iter().enumerate() {
                if exec(st, (seed << 16) | i as u64, &fs, &mut m).is_err() {
                    break;
                }
                done = i + 1;
            }
            drop(fs);
            let policy =
                [CutPolicy::DropAll, CutPolicy::KeepAll, CutPolicy::Random][(n % 3) as usize];
            let mut crng = StdRng::seed_from_u64(seed * 7919 + n);
            let img = mem.power_cut(policy, &mut crng);
            // fsck -n on the crashed image, before a mount tidies anything: no errors
            // (notes, such as orphans a mount deletes, are normal).
            let fsck_errors = fsck(&img);
            if !fsck_errors.is_empty() {
                tally.inconsistent += 1;
                eprintln!(
                    "{}: seed {seed} cut {n} ({policy:?}): fsck: {fsck_errors:?}",
                    p.name
                );
                continue;
            }
            let fs = match FileSystem::open(Arc::new(img), fs_opts(p)) {
                Ok(f) => f,
                Err(e) => {
                    tally.inconsistent += 1;
                    eprintln!("{}: seed {seed} cut {n}: mount failed: {e}", p.name);
                    continue;
                }
            };
            if fs.store().tail().reason.contains("discarded") {
                tally.discarded += 1;
            }
            match fs.check() {
                Ok(r) if r.is_clean() => {}
                Ok(r) => {
                    tally.inconsistent += 1;
                    eprintln!(
                        "{}: seed {seed} cut {n} ({policy:?}): check: {:?}",
                        p.name, r.problems
                    );
                    continue;
                }
                Err(e) => {
                    tally.inconsistent += 1;
                    eprintln!("{}: seed {seed} cut {n}: check failed: {e}", p.name);
                    continue;
                }
            }
            let got = match read_back(&fs) {
                Ok(g) => g,
                Err(e) => {
                    tally.inconsistent += 1;
                    eprintln!("{}: seed {seed} cut {n}: read back failed: {e}", p.name);
                    continue;
                }
            };
            // The window of states: last acknowledged commit .. the step that was cut.
            let hi = (done + 1).min(steps.len());
            let lo = (0..=done)
                .rev()
                .find(|&i| matches!(effects[i], Effect::Ack | Effect::Fsync(_)))
                .unwrap_or(0);
            let window = &states[lo..=hi];
            let ns_ok = window.iter().any(|s| s.namespace() == got.namespace());
            // Fsynced files not changed since: exact content.
            let mut fsync_ok = true;
            for (ino, content) in &got.files {
                let last_fsync = (0..=done.min(steps.len()))
                    .rev()
                    .find(|&i| effects[i] == Effect::Fsync(*ino));
                if let Some(f) = last_fsync {
                    let changed_after = (f + 1..=hi).any(|i| effects[i] == Effect::Changed(*ino));
                    if !changed_after && states[f].files.get(ino) != Some(content) {
                        fsync_ok = false;
                        eprintln!(
                            "{}: seed {seed} cut {n} ({policy:?}): file {ino} fsynced at step {f}: {} bytes, got {}",
                            p.name,
                            states[f].files.get(ino).map_or(0, |c| c.len()),
                            content.len()
                        );
                    }
                }
            }
            // Every 512-byte unit is zero or one the file held at some step (a page can
            // mix units written by different steps).
            let own_ok = got.files.iter().all(|(ino, content)| {
                content.chunks(512).enumerate().all(|(ui, unit)| {
                    let r = ui * 512..ui * 512 + unit.len();
                    unit.iter().all(|&b| b == 0)
                        || states[..=hi]
                            .iter()
                            .any(|s| s.files.get(ino).is_some_and(|c| same_unit(c, &r, unit)))
                })
            });
            if !own_ok && std::env::var("PC_DEBUG").is_ok() {
                for (ino, content) in &got.files {
                    for (ui, unit) in content.chunks(512).enumerate() {
                        let r = ui * 512..ui * 512 + unit.len();
                        let ok = unit.iter().all(|&b| b == 0)
                            || states[..=hi]
                                .iter()
                                .any(|s| s.files.get(ino).is_some_and(|c| same_unit(c, &r, unit)));
                        if !ok {
                            let sizes: Vec<usize> = states[..=hi]
                                .iter()
                                .map(|s| s.files.get(ino).map_or(0, |c| c.len()))
                                .collect();
                            eprintln!(
                                "  file {ino} size {} unit {ui}: {:?}; sizes over steps {:?}",
                                content.len(),
                                &unit[..16.min(unit.len())],
                                sizes
                            );
                            eprintln!("  steps: {:?}", &steps[..hi]);
                            break;
                        }
                    }
                }
            }
            // A file changed after its acknowledged fsync still has a size it had at or after
            // that fsync: the fsynced record is never rolled back (a checked group whose
            // bytes were overwritten before a later group confirmed it would be).
            let size_ok = got.files.iter().all(|(ino, content)| {
                let Some(f) = (0..=done.min(steps.len()))
                    .rev()
                    .find(|&i| effects[i] == Effect::Fsync(*ino))
                else {
                    return true;
                };
                states[f..=hi]
                    .iter()
                    .any(|s| s.files.get(ino).is_some_and(|c| c.len() == content.len()))
            });
            if !size_ok {
                eprintln!(
                    "{}: seed {seed} cut {n}: a file's size went back past its fsync",
                    p.name
                );
            }
            if !ns_ok || !fsync_ok || !own_ok || !size_ok {
                tally.lost += 1;
                eprintln!(
                    "{}: seed {seed} cut {n} ({policy:?}): done {done} window {lo}..={hi} ns_ok={ns_ok} fsync_ok={fsync_ok} own_ok={own_ok}",
                    p.name
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
    let t = sweep(p, min_points);
    println!(
        "power-cut: workload={} points={} lost={} inconsistent={}",
        p.name, t.points, t.lost, t.inconsistent
    );
    println!(
        "{}: recoveries that discarded a checked last group: {}",
        p.name, t.discarded
    );
    if p.append_pct > 0 {
        assert!(
            t.discarded > 0,
            "{}: no checked group was ever discarded",
            p.name
        );
    }
    assert!(t.points >= min_points);
    assert_eq!(t.lost, 0, "{}: acknowledged state lost", p.name);
    assert_eq!(t.inconsistent, 0, "{}: inconsistent after recovery", p.name);
}

//                                Cre Mkd Wr Tr Fsy Syn Ren Unl Lnk Rmd
const W_FILES: [u32; 10] = [5, 1, 8, 1, 4, 1, 2, 2, 1, 0];
const W_RENAME: [u32; 10] = [4, 2, 3, 0, 2, 2, 8, 2, 2, 1];
const W_FSYNC: [u32; 10] = [3, 1, 6, 2, 8, 1, 3, 2, 1, 1];
const W_APPEND: [u32; 10] = [2, 0, 10, 1, 8, 1, 1, 1, 0, 0];

#[test]
fn power_cut_fs_create_write_fsync() {
    report(
        &Profile {
            name: "fs-create-write-fsync",
            steps: 80,
            weights: W_FILES,
            checkpoint_bytes: None,
            append_pct: 0,
        },
        2000,
    );
}

#[test]
fn power_cut_fs_rename_unlink() {
    report(
        &Profile {
            name: "fs-rename-unlink",
            steps: 80,
            weights: W_RENAME,
            checkpoint_bytes: None,
            append_pct: 0,
        },
        2000,
    );
}

#[test]
fn power_cut_fs_fsync_heavy_checkpoints() {
    report(
        &Profile {
            name: "fs-fsync-checkpoints",
            steps: 80,
            weights: W_FSYNC,
            checkpoint_bytes: Some(48 * 1024),
            append_pct: 0,
        },
        2000,
    );
}

/// Appends then fsync (the checked one-flush commit: the inode record vouches for the
/// appended bytes with a CRC instead of a flush before it), mixed with overwrites and
/// truncates of bytes a checked record may still vouch for (which must confirm first).
#[test]
fn power_cut_fs_append_fsync() {
    report(
        &Profile {
            name: "fs-append-fsync",
            steps: 80,
            weights: W_APPEND,
            checkpoint_bytes: None,
            append_pct: 70,
        },
        2000,
    );
}
