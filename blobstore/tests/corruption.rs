//! Random damage to the metadata regions of real images: the superblock copies, the
//! checkpoint (snapshot) segment, the live log segments and the segments of older logs.
//!
//! Every damaged image must open to an error of a "bad image" kind, or to a store whose
//! check is clean and whose metadata is exactly a state that was once durable (recorded after
//! each sync while the image was built). Beyond that, an independent walk of the damaged log
//! (an oracle built on the public format decoders) predicts the exact outcome: which error
//! kind, or which durable state (log epoch and log bytes) the open must land on.
//!
//! `CORRUPTION_CASES` (default 10000) and `CORRUPTION_SEED` scale and vary the random run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use blobstore::format::block::{
    chain_seed, check_jump, decode_block, encode_block, BlockHeader, KIND_JUMP, KIND_RECORDS,
};
use blobstore::format::record::{encode_all, Record};
use blobstore::format::superblock::{Superblock, SB_SIZE, SB_VERSION};
use blobstore::{
    BlobId, BlobMeta, BlobOptions, Blobstore, Error, FormatOptions, MetadataLayout, OpenOptions,
    XattrNs,
};
use driver::mem::{CutPolicy, MemDevice, MemOptions};
use driver::Device;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::pattern;

type Export = BTreeMap<BlobId, BlobMeta>;
/// A durable state is identified by the log it lives in and how many log bytes lead to it.
type StateKey = (u64, u64);

const DEV_SIZE: u64 = 8 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finish {
    /// `close()`: a final checkpoint, nothing pending.
    Close,
    /// Dropped without close, the device as it stands (unsynced data writes included).
    Drop,
    /// Dropped without close after a power cut that loses every unflushed write.
    PowerCut,
}

/// A built image and what is known about it.
struct Image {
    name: String,
    mem: MemDevice,
    lba: u32,
    cs: u64,
    layout: MetadataLayout,
    /// Segments of older logs (freed by checkpoints; an older superblock copy may point at
    /// one of those logs).
    old_segments: Vec<u64>,
    /// Every durable state, by (log epoch, log bytes) as observed after each sync.
    states: HashMap<StateKey, Export>,
    /// The same states, by value.
    values: Vec<Export>,
    latest: StateKey,
    /// Checkpoints were written in the background.
    background: bool,
}

impl Image {
    /// Whether `got`, loaded at log position `key`, is a state that was durable once.
    fn durable(&self, key: StateKey, got: &Export) -> Result<(), String> {
        match self.states.get(&key) {
            Some(want) if want == got => Ok(()),
            Some(_) => Err(format!(
                "state at log position {key:?} differs from the one recorded there"
            )),
            None if !self.background => Err(format!(
                "opened at log position {key:?}, which was never durable"
            )),
            None if self.values.contains(got) => Ok(()),
            None => Err(format!(
                "opened at log position {key:?} to a state that was never durable"
            )),
        }
    }
}

/// Open options of an image: a checkpoint every few clusters of log, written inline
/// (deterministic: every log position is a state recorded while building) or by the
/// background checkpointer (the default; its catch-up groups land at positions of the new
/// log that were never observed live, so those states are checked by value).
fn open_opts(cs: u64, background: bool) -> OpenOptions {
    OpenOptions {
        checkpoint_bytes: Some(if cs <= 16 * 1024 { 8 * cs } else { 3 * cs }),
        background_checkpoint: background,
        ..OpenOptions::default()
    }
}

fn record_state(store: &Blobstore, states: &mut HashMap<StateKey, Export>) -> StateKey {
    let info = store.info();
    let key = (info.log_epoch, info.log_bytes);
    let ex = store.export();
    if let Some(old) = states.get(&key) {
        assert_eq!(old, &ex, "two different states at log position {key:?}");
    } else {
        states.insert(key, ex);
    }
    key
}

/// Builds a populated store with a long log: blobs, xattrs in both namespaces, thin and
/// thick clusters with data, resizes, deletes, read-only blobs and transactions, each step
/// synced, with a checkpoint every few clusters of log and a few explicit ones.
fn build_image(
    lba: u32,
    cs: u32,
    finish: Finish,
    background: bool,
    steps: usize,
    seed: u64,
) -> Image {
    let name = format!(
        "lba{lba}-cs{}k-{finish:?}{}",
        cs / 1024,
        if background { "-bg" } else { "" }
    );
    let cs64 = u64::from(cs);
    let mem = MemDevice::new(MemOptions {
        capacity: DEV_SIZE,
        lba_size: lba,
        ..MemOptions::default()
    })
    .unwrap();
    let dev: Arc<dyn Device> = Arc::new(mem.clone());
    let store = Blobstore::create(
        Arc::clone(&dev),
        &FormatOptions {
            cluster_size: cs,
            uuid: Some(*b"corruption-test!"),
            ..FormatOptions::default()
        },
        open_opts(cs64, background),
    )
    .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut states = HashMap::new();
    let mut latest = record_state(&store, &mut states);
    let mut ever_log: BTreeSet<u64> = BTreeSet::new();
    let mut epochs = BTreeSet::new();
    let mut ch = store.channel().unwrap();
    let mut data_clusters = 0u64;
    let max_data = if cs <= 16 * 1024 { 60 } else { 24 };
    let note_log = |store: &Blobstore, ever: &mut BTreeSet<u64>, epochs: &mut BTreeSet<u64>| {
        for s in store.metadata_layout().log_segments {
            ever.insert(s.0);
        }
        epochs.insert(store.info().log_epoch);
    };
    note_log(&store, &mut ever_log, &mut epochs);

    let writable = |store: &Blobstore| -> Vec<BlobId> {
        store
            .blob_ids()
            .into_iter()
            .filter(|id| store.blob_meta(*id).unwrap().flags & blobstore::FLAG_READ_ONLY == 0)
            .collect()
    };
    for step in 0..steps {
        let ids = writable(&store);
        let op = if ids.len() < 4 {
            0
        } else {
            rng.gen_range(0..100)
        };
        match op {
            0..=11 => {
                let thin = rng.gen_bool(0.7) || data_clusters >= max_data;
                let clusters = rng.gen_range(0..4u64);
                if !thin {
                    data_clusters += clusters;
                }
                let mut xattrs = Vec::new();
                for k in 0..rng.gen_range(0..3) {
                    let ns = if rng.gen_bool(0.5) {
                        XattrNs::User
                    } else {
                        XattrNs::Internal
                    };
                    let len = rng.gen_range(0..900);
                    xattrs.push((ns, format!("init{k}").into_bytes(), vec![step as u8; len]));
                }
                store
                    .create_blob(BlobOptions {
                        thin,
                        clusters,
                        xattrs,
                    })
                    .unwrap();
            }
            12..=44 => {
                let id = ids[rng.gen_range(0..ids.len())];
                let b = store.open_blob(id).unwrap();
                let name = format!("x{}", rng.gen_range(0..12));
                let len = rng.gen_range(0..1200);
                let val: Vec<u8> = (0..len).map(|i| (i as u8) ^ (step as u8)).collect();
                if rng.gen_bool(0.5) {
                    b.set_xattr(name.as_bytes(), &val).unwrap();
                } else {
                    b.set_xattr_ns(XattrNs::Internal, name.as_bytes(), &val)
                        .unwrap();
                }
            }
            45..=54 => {
                let id = ids[rng.gen_range(0..ids.len())];
                let b = store.open_blob(id).unwrap();
                if let Some(n) = b.xattr_names().first() {
                    b.remove_xattr(n).unwrap();
                } else {
                    b.set_xattr(b"filler", b"1").unwrap();
                }
            }
            55..=69 => {
                // Data into a thin blob: allocates a cluster on first write.
                let id = ids[rng.gen_range(0..ids.len())];
                let b = store.open_blob(id).unwrap();
                if b.is_thin() && data_clusters < max_data {
                    if b.num_clusters() == 0 {
                        b.resize(2).unwrap();
                    }
                    let idx = rng.gen_range(0..b.num_clusters());
                    let off = idx * cs64 + u64::from(lba) * rng.gen_range(0..4);
                    let len = u64::from(lba) * rng.gen_range(1..8);
                    let len = len.min((idx + 1) * cs64 - off);
                    b.write(&mut ch, off, &pattern(step as u64, off, len as usize))
                        .unwrap();
                    data_clusters += 1;
                } else {
                    b.set_xattr(b"nodata", &[step as u8]).unwrap();
                }
            }
            70..=77 => {
                let id = ids[rng.gen_range(0..ids.len())];
                let b = store.open_blob(id).unwrap();
                let cur = b.num_clusters();
                let new = if cur > 0 && rng.gen_bool(0.6) {
                    rng.gen_range(0..cur)
                } else if b.is_thin() {
                    cur + rng.gen_range(1..5)
                } else {
                    cur
                };
                b.resize(new).unwrap();
            }
            78..=86 => {
                let id = ids[rng.gen_range(0..ids.len())];
                store.delete_blob(id).unwrap();
            }
            87..=89 => {
                let id = ids[rng.gen_range(0..ids.len())];
                store.open_blob(id).unwrap().set_read_only().unwrap();
            }
            _ => {
                let a = ids[rng.gen_range(0..ids.len())];
                let b = ids[rng.gen_range(0..ids.len())];
                let mut t = store.transaction();
                t.set_xattr(a, XattrNs::Internal, b"moved", &[step as u8; 40]);
                t.set_xattr(b, XattrNs::User, b"peer", format!("{a:?}").as_bytes());
                t.create_blob(rng.gen_range(0..3));
                t.commit().unwrap();
            }
        }
        store.sync().unwrap();
        latest = record_state(&store, &mut states);
        note_log(&store, &mut ever_log, &mut epochs);
        if step % 40 == 39 {
            // Write a checkpoint, but ask for a few explicit ones too.
            store.checkpoint().unwrap();
            latest = record_state(&store, &mut states);
            note_log(&store, &mut ever_log, &mut epochs);
        }
    }
    // More logged groups after the last checkpoint, so that the live log holds groups
    // after its snapshot and spans segments.
    let (mut extra, mut since_ckpt, mut epoch) = (0, 0, store.info().log_epoch);
    while (since_ckpt < 8 || store.metadata_layout().log_segments.len() < 2) && extra < 400 {
        let id = writable(&store)[0];
        store
            .open_blob(id)
            .unwrap()
            .set_xattr(format!("tail{}", extra % 7).as_bytes(), &[extra as u8; 700])
            .unwrap();
        store.sync().unwrap();
        latest = record_state(&store, &mut states);
        note_log(&store, &mut ever_log, &mut epochs);
        extra += 1;
        since_ckpt += 1;
        if store.info().log_epoch != epoch {
            epoch = store.info().log_epoch;
            since_ckpt = 0;
        }
    }
    let info = store.info();
    assert!(
        info.checkpoint_count >= 2,
        "{name}: only {} checkpoints",
        info.checkpoint_count
    );
    let last_synced = states[&latest].clone();
    let mem = match finish {
        Finish::Close => {
            drop(ch);
            store.close().unwrap();
            mem
        }
        Finish::Drop | Finish::PowerCut => {
            // Changes that never become durable: metadata, and data in new clusters.
            let ids = writable(&store);
            let b = store.open_blob(ids[0]).unwrap();
            b.set_xattr(b"unsynced", b"lost").unwrap();
            if b.is_thin() {
                b.resize(b.num_clusters() + 1).unwrap();
                let off = (b.num_clusters() - 1) * cs64;
                b.write(&mut ch, off, &pattern(999, 0, lba as usize))
                    .unwrap();
            }
            drop(b);
            store.create_blob(BlobOptions::default()).unwrap();
            let img = if finish == Finish::PowerCut {
                mem.power_cut(CutPolicy::DropAll, &mut StdRng::seed_from_u64(seed))
            } else {
                mem
            };
            drop(ch);
            drop(store);
            img
        }
    };
    // Where the metadata is, as the image will be loaded (a background checkpoint may have
    // switched logs up to the moment the store went away).
    let ro = Blobstore::open(
        Arc::new(mem.clone()),
        OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    note_log(&ro, &mut ever_log, &mut epochs);
    let layout = ro.metadata_layout();
    assert_eq!(
        ro.export(),
        last_synced,
        "{name}: the image lost synced changes"
    );
    latest = record_state(&ro, &mut states);
    drop(ro);
    if finish != Finish::Close {
        assert!(
            layout.log_segments.len() >= 2,
            "{name}: the live log has no jump"
        );
    }
    let live: BTreeSet<u64> = layout.log_segments.iter().map(|s| s.0).collect();
    let old_segments: Vec<u64> = ever_log.difference(&live).copied().collect();
    // The image as built opens to the latest durable state.
    let check = Blobstore::open(Arc::new(mem.duplicate()), open_opts(cs64, background)).unwrap();
    let info = check.info();
    assert_eq!((info.log_epoch, info.log_bytes), latest, "{name}");
    assert_eq!(check.export(), states[&latest], "{name}");
    support::assert_clean(&check);
    drop(check);
    eprintln!(
        "image {name}: {} durable states over {} logs, live log {} segments (tail {:?}), {} old segments",
        states.len(),
        epochs.len(),
        layout.log_segments.len(),
        layout.tail,
        old_segments.len()
    );
    let mut values: Vec<Export> = Vec::new();
    for v in states.values() {
        if !values.contains(v) {
            values.push(v.clone());
        }
    }
    Image {
        name,
        mem,
        lba,
        cs: cs64,
        layout,
        old_segments,
        states,
        values,
        latest,
        background,
    }
}

// ---------------------------------------------------------------------------------------
// The oracle: what opening an image must give, derived with the public format decoders.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Corruption,
    NotABlobstore,
    Unsupported,
    Invalid,
}

fn kind_of(e: &Error) -> Option<Kind> {
    match e {
        Error::Corruption(_) => Some(Kind::Corruption),
        Error::NotABlobstore(_) => Some(Kind::NotABlobstore),
        Error::Unsupported(_) => Some(Kind::Unsupported),
        Error::Invalid(_) => Some(Kind::Invalid),
        _ => None,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Err(Kind),
    /// Opens to the durable state at this log position.
    Ok(StateKey),
}

fn peek(mem: &MemDevice, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.peek(off, &mut v);
    v
}

/// Which superblock copy wins, as documented: the valid one with the higher generation.
fn oracle_superblock(mem: &MemDevice) -> Result<Superblock, Kind> {
    let raw = peek(mem, 0, 2 * SB_SIZE);
    let a = Superblock::decode(&raw[..SB_SIZE]);
    let b = Superblock::decode(&raw[SB_SIZE..]);
    match (a, b) {
        (Ok(a), Ok(b)) => Ok(if b.generation > a.generation { b } else { a }),
        (Ok(a), Err(_)) => Ok(a),
        (Err(_), Ok(b)) => Ok(b),
        (Err(a), Err(b)) => {
            let rank = |e: &Error| match e {
                Error::NotABlobstore(_) => 0,
                Error::Unsupported(_) => 2,
                _ => 1,
            };
            let e = if rank(&b) > rank(&a) { b } else { a };
            Err(match e {
                Error::NotABlobstore(_) => Kind::NotABlobstore,
                Error::Unsupported(_) => Kind::Unsupported,
                _ => Kind::Corruption,
            })
        }
    }
}

/// Walks the log `sb` points at the way the format defines it: blocks chained by epoch,
/// sequence and CRC from the superblock's start; the first block that does not continue the
/// chain ends the log; the first group must be a complete snapshot.
fn oracle_log(mem: &MemDevice, sb: &Superblock) -> Expect {
    let cap = mem.geometry().capacity();
    let lba = mem.geometry().lba_size;
    if cap < sb.cluster_count.saturating_mul(u64::from(sb.cluster_size))
        || lba > sb.log_unit
        || !sb.log_unit.is_multiple_of(lba)
    {
        return Expect::Err(Kind::Invalid);
    }
    let cs = u64::from(sb.cluster_size);
    let unit = u64::from(sb.log_unit);
    let mut seg = sb.log_start;
    let mut visited = BTreeSet::from([seg]);
    let mut buf = peek(mem, seg * cs, cs as usize);
    let (mut off, mut seq, mut prev, mut bytes) =
        (0u64, sb.log_start_seq, chain_seed(sb.log_epoch), 0u64);
    let mut payload = Vec::new();
    let mut last_complete: Option<u64> = None;
    while let Ok((h, p, crc)) = decode_block(&buf[off as usize..], sb.log_epoch, seq, prev) {
        seq = seq.wrapping_add(1);
        prev = crc;
        bytes += BlockHeader::padded_len(p.len(), unit as usize) as u64;
        if h.kind == KIND_JUMP {
            if check_jump(h.jump_to, sb.cluster_count).is_err() || !visited.insert(h.jump_to) {
                return Expect::Err(Kind::Corruption);
            }
            seg = h.jump_to;
            buf = peek(mem, seg * cs, cs as usize);
            off = 0;
            continue;
        }
        off += BlockHeader::padded_len(p.len(), unit as usize) as u64;
        payload.extend_from_slice(p);
        if h.continues() {
            continue;
        }
        let Ok(recs) = Record::decode_all(&payload) else {
            return Expect::Err(Kind::Corruption);
        };
        if last_complete.is_none() {
            let framed = recs.len() >= 2
                && matches!(recs.first(), Some(Record::SnapshotBegin { .. }))
                && matches!(recs.last(), Some(Record::SnapshotEnd { .. }));
            if !framed {
                return Expect::Err(Kind::Corruption);
            }
        }
        payload.clear();
        last_complete = Some(bytes);
        if off + unit > cs {
            return Expect::Err(Kind::Corruption);
        }
    }
    match last_complete {
        None => Expect::Err(Kind::Corruption),
        Some(b) => Expect::Ok((sb.log_epoch, b)),
    }
}

fn oracle(mem: &MemDevice, read_only: bool) -> Expect {
    match oracle_superblock(mem) {
        Err(k) => Expect::Err(k),
        Ok(sb) if sb.read_only_features() != 0 && !read_only => Expect::Err(Kind::Unsupported),
        Ok(sb) => oracle_log(mem, &sb),
    }
}

// ---------------------------------------------------------------------------------------
// Damage.
// ---------------------------------------------------------------------------------------

/// A byte range of metadata that damage may hit.
#[derive(Clone, Copy, Debug)]
struct Region {
    off: u64,
    len: u64,
}

struct Targets {
    superblocks: Region,
    snapshot: Vec<Region>,
    live_log: Vec<Region>,
    old_log: Vec<Region>,
    all: Vec<Region>,
}

/// The blocks of the log `sb` points at, as (byte offset on the device, bytes on disk,
/// group index), in log order.
fn log_blocks(mem: &MemDevice, sb: &Superblock) -> Vec<(u64, u64, usize)> {
    let cs = u64::from(sb.cluster_size);
    let unit = sb.log_unit as usize;
    let (mut seg, mut off, mut seq, mut prev) = (
        sb.log_start,
        0u64,
        sb.log_start_seq,
        chain_seed(sb.log_epoch),
    );
    let mut buf = peek(mem, seg * cs, cs as usize);
    let (mut out, mut group) = (Vec::new(), 0usize);
    while let Ok((h, p, crc)) = decode_block(&buf[off as usize..], sb.log_epoch, seq, prev) {
        let len = BlockHeader::padded_len(p.len(), unit) as u64;
        out.push((seg * cs + off, len, group));
        seq += 1;
        prev = crc;
        if h.kind == KIND_JUMP {
            seg = h.jump_to;
            buf = peek(mem, seg * cs, cs as usize);
            off = 0;
            continue;
        }
        off += len;
        if !h.continues() {
            group += 1;
        }
    }
    out
}

fn targets(img: &Image) -> Targets {
    let cs = img.cs;
    let unit = u64::from(img.lba).max(512);
    let sb = oracle_superblock(&img.mem).expect("pristine superblock");
    let blocks = log_blocks(&img.mem, &sb);
    assert!(!blocks.is_empty());
    // The snapshot group's blocks (it may span segments), the later groups' blocks, and the
    // space after the last block (where a torn or stale block would sit).
    let snapshot: Vec<Region> = blocks
        .iter()
        .filter(|b| b.2 == 0)
        .map(|b| Region { off: b.0, len: b.1 })
        .collect();
    let mut live_log: Vec<Region> = blocks
        .iter()
        .filter(|b| b.2 > 0)
        .map(|b| Region { off: b.0, len: b.1 })
        .collect();
    let (tseg, toff) = (img.layout.tail.0 .0, img.layout.tail.1);
    live_log.push(Region {
        off: tseg * cs + toff,
        len: (4 * unit).min(cs - toff).max(1),
    });
    let old_log: Vec<Region> = img
        .old_segments
        .iter()
        .map(|&s| Region {
            off: s * cs,
            len: cs,
        })
        .collect();
    let superblocks = Region {
        off: 0,
        len: 2 * SB_SIZE as u64,
    };
    let mut all = vec![superblocks];
    all.extend(snapshot.iter().copied());
    all.extend(live_log.iter().copied());
    all.extend(old_log.iter().copied());
    Targets {
        superblocks,
        snapshot,
        live_log,
        old_log,
        all,
    }
}

/// Applies one random piece of damage; returns a short description.
fn damage(img: &Image, t: &Targets, mem: &MemDevice, rng: &mut StdRng) -> String {
    let pick = |v: &[Region], rng: &mut StdRng| v[rng.gen_range(0..v.len())];
    let w = rng.gen_range(0..100);
    let (which, r) = if w < 22 || (t.old_log.is_empty() && w >= 85) {
        ("sb", t.superblocks)
    } else if w < 38 || (t.live_log.is_empty() && w < 85) {
        ("snap", pick(&t.snapshot, rng))
    } else if w < 85 {
        ("log", pick(&t.live_log, rng))
    } else {
        ("oldlog", pick(&t.old_log, rng))
    };
    let cap = img.mem.geometry().capacity();
    // Favour the bytes that matter: block headers and payloads (a block's padding is not
    // covered by its CRC), and the fields and CRC of a superblock copy.
    let pos = match (which, rng.gen_range(0..10)) {
        ("sb", 0..=4) => {
            let copy = rng.gen_range(0..2u64) * SB_SIZE as u64;
            if rng.gen_bool(0.8) {
                copy + rng.gen_range(0..128)
            } else {
                copy + SB_SIZE as u64 - 4 + rng.gen_range(0..4)
            }
        }
        ("sb", _) => r.off + rng.gen_range(0..r.len),
        (_, 0..=5) => r.off + rng.gen_range(0..r.len.min(256)),
        _ => r.off + rng.gen_range(0..r.len),
    };
    let room = (r.off + r.len - pos) as usize;
    let kind = rng.gen_range(0..7);
    match kind {
        0 => {
            // Bit flips, clustered or spread over the region.
            let n = rng.gen_range(1..=8);
            let spread = rng.gen_bool(0.5);
            for _ in 0..n {
                let at = if spread {
                    r.off + rng.gen_range(0..r.len)
                } else {
                    (pos + rng.gen_range(0..64)).min(cap - 1)
                };
                let mut b = [0u8];
                mem.peek(at, &mut b);
                b[0] ^= 1 << rng.gen_range(0..8);
                mem.poke(at, &b);
            }
            format!("{which}: {n} bit flips near {pos:#x}")
        }
        1 => {
            let n = rng.gen_range(1..=512).min(room);
            let v: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            mem.poke(pos, &v);
            format!("{which}: {n} random bytes at {pos:#x}")
        }
        2 => {
            let n = rng.gen_range(1..=4096).min(room);
            mem.poke(pos, &vec![0u8; n]);
            format!("{which}: {n} zero bytes at {pos:#x}")
        }
        3 => {
            // Looks truncated: everything from a point to the end of its segment (or of the
            // superblock area) is gone.
            let pos = if rng.gen_bool(0.5) {
                pos - pos % u64::from(img.lba)
            } else {
                pos
            };
            let end = if which == "sb" {
                r.off + r.len
            } else {
                (pos / img.cs + 1) * img.cs
            };
            let n = (end - pos) as usize;
            mem.poke(pos, &vec![0u8; n]);
            format!("{which}: truncated from {pos:#x} ({n} bytes)")
        }
        4 => {
            // A run of metadata copied from elsewhere (another block, segment or copy).
            let src_r = pick(&t.all, rng);
            let src = src_r.off + rng.gen_range(0..src_r.len);
            let align = rng.gen_bool(0.6);
            let (src, dst) = if align {
                let a = u64::from(img.lba);
                (src - src % a, pos - pos % a)
            } else {
                (src, pos)
            };
            let n = rng
                .gen_range(16..=4096usize)
                .min((src_r.off + src_r.len - src) as usize)
                .min((r.off + r.len - dst) as usize);
            let v = peek(&img.mem, src, n);
            mem.poke(dst, &v);
            format!("{which}: {n} bytes copied from {src:#x} to {dst:#x}")
        }
        5 => {
            // A header-sized field at a block boundary set to an extreme or random value.
            let a = u64::from(img.lba);
            let base = pos - pos % a;
            let fields = [
                0u64, 4, 6, 8, 16, 24, 28, 32, 40, 44, 56, 64, 72, 80, 88, 96, 104,
            ];
            let f = fields[rng.gen_range(0..fields.len())];
            let at = (base + f).min(cap - 8);
            let v: u64 = match rng.gen_range(0..4) {
                0 => 0,
                1 => u64::MAX,
                2 => rng.gen_range(0..64),
                _ => rng.gen(),
            };
            let width = [1usize, 2, 4, 8][rng.gen_range(0..4)];
            mem.poke(at, &v.to_le_bytes()[..width]);
            format!("{which}: field at {at:#x} ({width} bytes) = {v:#x}")
        }
        _ => {
            // A whole log unit (or superblock copy) replaced by a copy of another one.
            let a = if which == "sb" {
                SB_SIZE as u64
            } else {
                u64::from(img.lba)
            };
            let dst = pos - pos % a;
            let src_r = pick(&t.all, rng);
            let src = src_r.off + rng.gen_range(0..src_r.len);
            let src = src - src % a;
            let v = peek(&img.mem, src, a as usize);
            mem.poke(dst, &v);
            format!("{which}: unit at {dst:#x} replaced by the one at {src:#x}")
        }
    }
}

// ---------------------------------------------------------------------------------------
// The run.
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    cases: u64,
    errors: u64,
    older: u64,
    latest: u64,
    /// Cases where a change was committed after the damaged load and reloaded.
    rewritten: u64,
    by_kind: BTreeMap<String, u64>,
    /// Outcomes by the regions a case damaged.
    by_region: BTreeMap<String, u64>,
    failures: Vec<String>,
}

/// Runs one case; `Err` describes a violated expectation.
fn run_case(img: &Image, t: &Targets, seed: u64, tally: &mut Tally) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mem = img.mem.duplicate();
    let n = rng.gen_range(1..=3);
    let what: Vec<String> = (0..n).map(|_| damage(img, t, &mem, &mut rng)).collect();
    let read_only = rng.gen_bool(0.2);
    let expect = oracle(&mem, read_only);
    let mut hit: Vec<&str> = what
        .iter()
        .map(|w| w.split(':').next().unwrap_or(""))
        .collect();
    hit.sort_unstable();
    hit.dedup();
    let hit = hit.join("+");
    let res = Blobstore::open(
        Arc::new(mem.clone()),
        OpenOptions {
            read_only,
            ..open_opts(img.cs, img.background)
        },
    );
    let ctx = || format!("{} seed {seed:#x} damage {what:?}", img.name);
    match res {
        Err(e) => {
            let Some(k) = kind_of(&e) else {
                return Err(format!("{}: unexpected error kind: {e}", ctx()));
            };
            if expect != Expect::Err(k) {
                return Err(format!(
                    "{}: open failed with {e}, expected {expect:?}",
                    ctx()
                ));
            }
            if k == Kind::Corruption && !e.is_corruption() {
                return Err(format!("{}: is_corruption() false for {e}", ctx()));
            }
            tally.errors += 1;
            *tally.by_region.entry(format!("{hit}->err")).or_default() += 1;
            *tally.by_kind.entry(format!("{k:?}")).or_default() += 1;
        }
        Ok(store) => {
            let info = store.info();
            let key = (info.log_epoch, info.log_bytes);
            let got = store.export();
            img.durable(key, &got)
                .map_err(|m| format!("{}: {m} (expected {expect:?})", ctx()))?;
            if expect != Expect::Ok(key) {
                return Err(format!("{}: opened at {key:?}, expected {expect:?}", ctx()));
            }
            let rep = store
                .check()
                .map_err(|e| format!("{}: check failed: {e}", ctx()))?;
            if !rep.is_clean() {
                return Err(format!("{}: check found {:?}", ctx(), rep.problems));
            }
            if key == img.latest || got == img.states[&img.latest] {
                tally.latest += 1;
                *tally.by_region.entry(format!("{hit}->latest")).or_default() += 1;
            } else {
                tally.older += 1;
                *tally.by_region.entry(format!("{hit}->older")).or_default() += 1;
            }
            if !read_only && rng.gen_bool(0.5) {
                write_after_open(img, store, &mem, &mut rng, tally)
                    .map_err(|m| format!("{}: after opening at {key:?}: {m}", ctx()))?;
            }
        }
    }
    tally.cases += 1;
    Ok(())
}

/// The store keeps working after loading a damaged image: a change (a thick blob, so the
/// rebuilt allocator hands out and zeroes clusters, and sometimes a checkpoint) is written
/// after wherever replay stopped, and a fresh load sees exactly the new state.
fn write_after_open(
    img: &Image,
    store: Blobstore,
    mem: &MemDevice,
    rng: &mut StdRng,
    tally: &mut Tally,
) -> Result<(), String> {
    let made = store.create_blob(BlobOptions {
        thin: false,
        clusters: 2,
        xattrs: vec![(XattrNs::User, b"after".to_vec(), vec![0xa5; 300])],
    });
    match made {
        Ok(_) => {}
        Err(Error::NoSpace(_)) => return Ok(()),
        Err(e) => return Err(format!("create_blob: {e}")),
    }
    let res = if rng.gen_bool(0.3) {
        store.checkpoint()
    } else {
        store.sync()
    };
    res.map_err(|e| format!("commit: {e}"))?;
    let want = store.export();
    drop(store);
    let again = Blobstore::open(Arc::new(mem.clone()), open_opts(img.cs, img.background))
        .map_err(|e| format!("reopen after a commit failed: {e}"))?;
    if again.export() != want {
        return Err("reopen after a commit lost or changed metadata".into());
    }
    let rep = again.check().map_err(|e| format!("check: {e}"))?;
    if !rep.is_clean() {
        return Err(format!("check after reopen: {:?}", rep.problems));
    }
    tally.rewritten += 1;
    Ok(())
}

/// Writes a line to the real stdout, bypassing the test harness's output capture.
fn summary(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| {
            let v = v.trim();
            v.strip_prefix("0x")
                .map_or_else(|| v.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
        })
        .unwrap_or(default)
}

/// Aborts the process if the run (or one case) takes far too long: a hang in open or check
/// must fail the test, not stall it.
struct Watchdog {
    done: Arc<AtomicBool>,
    case: Arc<AtomicU64>,
    case_started_ms: Arc<AtomicU64>,
    t0: Instant,
}

impl Watchdog {
    fn start(total: Duration, per_case: Duration) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let case = Arc::new(AtomicU64::new(u64::MAX));
        let started = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        let (d, c, s) = (Arc::clone(&done), Arc::clone(&case), Arc::clone(&started));
        std::thread::spawn(move || {
            while !d.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                let now = t0.elapsed();
                let case_ms = now.as_millis() as u64 - s.load(Ordering::SeqCst);
                if now > total || case_ms > per_case.as_millis() as u64 {
                    eprintln!(
                        "corruption: WATCHDOG: case seed {:#x} running for {case_ms} ms (run {:?}): hang",
                        c.load(Ordering::SeqCst),
                        now
                    );
                    std::process::abort();
                }
            }
        });
        Watchdog {
            done,
            case,
            case_started_ms: started,
            t0,
        }
    }

    fn enter(&self, seed: u64) {
        self.case.store(seed, Ordering::SeqCst);
        self.case_started_ms
            .store(self.t0.elapsed().as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

#[test]
fn random_metadata_damage() {
    let cases = env_u64("CORRUPTION_CASES", 10_000);
    let base = env_u64("CORRUPTION_SEED", 0xb10b_f5c0_77e5_0001);
    let t_build = Instant::now();
    let images = [
        build_image(512, 16 * 1024, Finish::Drop, false, 240, 1),
        build_image(4096, 64 * 1024, Finish::Close, true, 200, 2),
        build_image(512, 64 * 1024, Finish::PowerCut, false, 240, 3),
        build_image(4096, 16 * 1024, Finish::Drop, true, 220, 4),
        build_image(512, 16 * 1024, Finish::Close, false, 220, 5),
        build_image(512, 16 * 1024, Finish::PowerCut, true, 240, 6),
    ];
    let build_time = t_build.elapsed();
    let targets: Vec<Targets> = images.iter().map(targets).collect();
    let dog = Watchdog::start(
        Duration::from_secs(30 + cases / 20),
        Duration::from_secs(10),
    );
    let mut tally = Tally::default();
    let t_run = Instant::now();
    let mut slowest = (Duration::ZERO, 0u64);
    for i in 0..cases {
        let which = (i % images.len() as u64) as usize;
        let seed = base.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        dog.enter(seed);
        let t = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| {
            run_case(&images[which], &targets[which], seed, &mut tally)
        }));
        let el = t.elapsed();
        if el > slowest.0 {
            slowest = (el, seed);
        }
        match r {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => tally.failures.push(msg),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                tally.failures.push(format!(
                    "{} seed {seed:#x}: PANIC: {msg}",
                    images[which].name
                ));
            }
        }
    }
    drop(dog);
    // Straight to stdout (not through the test harness's capture), so the summary shows in
    // a plain `cargo test` run.
    summary(&format!(
        "corruption: cases={} errors={} older_state={} latest_state={}",
        tally.cases, tally.errors, tally.older, tally.latest
    ));
    eprintln!(
        "corruption: cases={} errors={} older_state={} latest_state={} rewritten={} failures={} error_kinds={:?} build={:?} run={:?} slowest case={:?} (seed {:#x})",
        tally.cases,
        tally.errors,
        tally.older,
        tally.latest,
        tally.rewritten,
        tally.failures.len(),
        tally.by_kind,
        build_time,
        t_run.elapsed(),
        slowest.0,
        slowest.1
    );
    eprintln!(
        "corruption: outcomes by damaged region: {:?}",
        tally.by_region
    );
    for f in tally.failures.iter().take(20) {
        eprintln!("FAILURE: {f}");
    }
    assert!(
        tally.failures.is_empty(),
        "{} of {cases} cases failed; first: {}",
        tally.failures.len(),
        tally.failures[0]
    );
    assert!(tally.errors > 0 && tally.older > 0 && tally.latest > 0);
}

// ---------------------------------------------------------------------------------------
// Targeted cases.
// ---------------------------------------------------------------------------------------

fn small_image(finish: Finish) -> Image {
    build_image(512, 16 * 1024, finish, false, 90, 42)
}

fn read_sb(mem: &MemDevice, slot: u64) -> Superblock {
    Superblock::decode(&peek(mem, slot * SB_SIZE as u64, SB_SIZE)).unwrap()
}

fn write_sb(mem: &MemDevice, slot: u64, sb: &Superblock) {
    mem.poke(slot * SB_SIZE as u64, &sb.encode());
}

fn active_slot(img: &Image) -> u64 {
    img.layout.generation % 2
}

fn open(mem: &MemDevice, read_only: bool) -> blobstore::Result<Blobstore> {
    Blobstore::open(
        Arc::new(mem.clone()),
        OpenOptions {
            read_only,
            ..OpenOptions::default()
        },
    )
}

fn key_of(store: &Blobstore) -> StateKey {
    let i = store.info();
    (i.log_epoch, i.log_bytes)
}

#[test]
fn both_superblocks_zeroed_is_not_a_blobstore() {
    let img = small_image(Finish::Drop);
    let mem = img.mem.duplicate();
    mem.poke(0, &vec![0u8; 2 * SB_SIZE]);
    let e = open(&mem, false).unwrap_err();
    assert!(matches!(e, Error::NotABlobstore(_)), "{e}");
    let e = open(&mem, true).unwrap_err();
    assert!(matches!(e, Error::NotABlobstore(_)), "{e}");
}

#[test]
fn both_superblocks_bad_crc_is_corruption() {
    let img = small_image(Finish::Drop);
    let mem = img.mem.duplicate();
    for slot in 0..2u64 {
        let off = slot * SB_SIZE as u64 + 100;
        let mut b = [0u8];
        mem.peek(off, &mut b);
        mem.poke(off, &[b[0] ^ 0x40]);
    }
    let e = open(&mem, false).unwrap_err();
    assert!(e.is_corruption(), "{e}");
}

#[test]
fn one_superblock_damaged_opens_with_the_other() {
    let img = small_image(Finish::Drop);
    let active = active_slot(&img);
    // The older copy damaged: the newer one is used, nothing is lost.
    let mem = img.mem.duplicate();
    mem.poke((1 - active) * SB_SIZE as u64 + 60, &[0xff; 3]);
    let s = open(&mem, false).unwrap();
    assert_eq!(key_of(&s), img.latest);
    assert_eq!(s.export(), img.states[&img.latest]);
    support::assert_clean(&s);
    drop(s);
    // The newer copy damaged: the older copy's checkpoint and log are used. Its log was
    // freed by the newer checkpoint, so it may be cut short by reuse, but whatever opens is
    // a state that was durable once, and older than the latest.
    let mem = img.mem.duplicate();
    let before = read_sb(&mem, 1 - active);
    mem.poke(active * SB_SIZE as u64 + 60, &[0xff; 3]);
    match open(&mem, false) {
        Ok(s) => {
            let key = key_of(&s);
            assert_eq!(key.0, before.log_epoch);
            assert_ne!(key, img.latest);
            assert_eq!(Some(&s.export()), img.states.get(&key));
            support::assert_clean(&s);
        }
        Err(e) => assert!(e.is_corruption(), "{e}"),
    }
}

#[test]
fn one_superblock_damaged_right_after_a_checkpoint_opens_the_previous_state() {
    // A checkpoint with nothing allocated after it: the previous log is intact, so losing
    // the newer superblock copy gives exactly the state before the checkpoint.
    let mem = MemDevice::with_capacity(DEV_SIZE, 512).unwrap();
    let store = Blobstore::create(
        Arc::new(mem.clone()),
        &FormatOptions {
            cluster_size: 16 * 1024,
            ..FormatOptions::default()
        },
        OpenOptions::default(),
    )
    .unwrap();
    for i in 0..20u8 {
        let id = store
            .create_blob(BlobOptions {
                thin: true,
                clusters: 2,
                xattrs: vec![(XattrNs::User, b"n".to_vec(), vec![i; 100])],
            })
            .unwrap();
        store.open_blob(id).unwrap().set_xattr(b"m", &[i]).unwrap();
        store.sync().unwrap();
    }
    let before = store.export();
    let new_id = store.create_blob(BlobOptions::default()).unwrap();
    store.checkpoint().unwrap();
    let gen = store.metadata_layout().generation;
    drop(store);
    let damaged = mem.duplicate();
    damaged.poke((gen % 2) * SB_SIZE as u64 + 8, &[9]);
    let s = open(&damaged, false).unwrap();
    assert_eq!(s.export(), before);
    assert!(!s.blob_ids().contains(&new_id));
    support::assert_clean(&s);
    let s = open(&mem, false).unwrap();
    assert!(s.blob_ids().contains(&new_id));
}

#[test]
fn unknown_incompat_bit_is_unsupported() {
    let img = small_image(Finish::Close);
    let mem = img.mem.duplicate();
    for slot in 0..2 {
        let mut sb = read_sb(&mem, slot);
        sb.incompat |= 1 << 17;
        write_sb(&mem, slot, &sb);
    }
    for ro in [false, true] {
        let e = open(&mem, ro).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
    }
    // A version this build does not know is refused the same way.
    let mem = img.mem.duplicate();
    for slot in 0..2 {
        let mut sb = read_sb(&mem, slot);
        sb.version = SB_VERSION + 1;
        write_sb(&mem, slot, &sb);
    }
    let e = open(&mem, true).unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
}

#[test]
fn unknown_ro_compat_bit_allows_read_only_open_only() {
    let img = small_image(Finish::Drop);
    for both in [false, true] {
        let mem = img.mem.duplicate();
        let active = active_slot(&img);
        for slot in 0..2 {
            if both || slot == active {
                let mut sb = read_sb(&mem, slot);
                sb.ro_compat |= 1 << 5;
                write_sb(&mem, slot, &sb);
            }
        }
        let e = open(&mem, false).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
        let writes = mem.stats().writes;
        let s = open(&mem, true).unwrap();
        assert!(s.is_read_only());
        assert_eq!(key_of(&s), img.latest);
        assert_eq!(s.export(), img.states[&img.latest]);
        support::assert_clean(&s);
        assert!(matches!(
            s.create_blob(BlobOptions::default()),
            Err(Error::ReadOnly(_))
        ));
        drop(s);
        assert_eq!(mem.stats().writes, writes, "read-only open wrote");
    }
    // Unknown compat bits are ignored.
    let mem = img.mem.duplicate();
    let active = active_slot(&img);
    let mut sb = read_sb(&mem, active);
    sb.compat |= 1 << 9;
    write_sb(&mem, active, &sb);
    let s = open(&mem, false).unwrap();
    assert_eq!(key_of(&s), img.latest);
}

/// Copies the first `len` bytes of `from` onto a new device of `capacity` bytes.
fn copy_image(from: &MemDevice, capacity: u64, lba: u32, len: u64) -> MemDevice {
    let to = MemDevice::with_capacity(capacity, lba).unwrap();
    let chunk = 1 << 20;
    let mut off = 0;
    while off < len.min(capacity) {
        let n = chunk.min(len.min(capacity) - off);
        to.poke(off, &peek(from, off, n as usize));
        off += n;
    }
    to
}

#[test]
fn image_on_a_different_device() {
    let img = build_image(4096, 16 * 1024, Finish::Drop, false, 90, 43);
    // Truncated: the device is smaller than the store the superblock describes.
    let small = copy_image(&img.mem, DEV_SIZE / 2, 4096, DEV_SIZE);
    let e = open(&small, true).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    // Larger LBAs than the log was written with cannot hold its blocks.
    let img512 = small_image(Finish::Drop);
    let big_lba = copy_image(&img512.mem, DEV_SIZE, 4096, DEV_SIZE);
    let e = open(&big_lba, true).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    // Smaller LBAs, or a larger device: the store opens as it was and keeps working.
    for (cap, lba) in [(DEV_SIZE, 512), (2 * DEV_SIZE, 4096)] {
        let dev = copy_image(&img.mem, cap, lba, DEV_SIZE);
        let s = open(&dev, false).unwrap();
        assert_eq!(key_of(&s), img.latest);
        assert_eq!(s.export(), img.states[&img.latest]);
        assert_eq!(s.info().cluster_count, DEV_SIZE / img.cs);
        support::assert_clean(&s);
        let id = s
            .create_blob(BlobOptions {
                thin: true,
                clusters: 2,
                ..BlobOptions::default()
            })
            .unwrap();
        let b = s.open_blob(id).unwrap();
        let mut ch = s.channel().unwrap();
        b.write(&mut ch, u64::from(lba), &pattern(5, 0, lba as usize))
            .unwrap();
        drop(b);
        drop(ch);
        s.sync().unwrap();
        let want = s.export();
        drop(s);
        let s = open(&dev, false).unwrap();
        assert_eq!(s.export(), want, "{cap} bytes, lba {lba}");
        support::assert_clean(&s);
    }
}

/// How often a single damaged superblock copy still opens. The older copy points at the
/// log before the last checkpoint, whose segments were freed by that checkpoint and may
/// have been reused since, so it is a fallback only until the space is reused.
#[test]
fn newer_superblock_copy_damaged_falls_back_when_it_can() {
    let mut opened = 0;
    let mut refused = 0;
    for (i, (lba, cs, finish)) in [
        (512, 16 * 1024, Finish::Drop),
        (4096, 64 * 1024, Finish::Close),
        (512, 64 * 1024, Finish::PowerCut),
        (4096, 16 * 1024, Finish::Drop),
    ]
    .into_iter()
    .enumerate()
    {
        let img = build_image(lba, cs, finish, false, 120, 100 + i as u64);
        let mem = img.mem.duplicate();
        mem.poke(active_slot(&img) * SB_SIZE as u64 + 200, &[0x5a; 4]);
        match open(&mem, false) {
            Ok(s) => {
                let key = key_of(&s);
                assert_eq!(Some(&s.export()), img.states.get(&key), "{}", img.name);
                support::assert_clean(&s);
                opened += 1;
            }
            Err(e) => {
                assert!(e.is_corruption(), "{}: {e}", img.name);
                refused += 1;
            }
        }
    }
    eprintln!("newer superblock copy damaged: {opened} opened an older state, {refused} refused");
}

/// Regression (fixed in the library): when only the newer superblock copy carries an unknown incompat feature bit (a
/// newer build upgraded the store and wrote the next generation) while the older copy is
/// still valid, `read_superblocks` silently picks the older copy and opens its stale
/// checkpoint read-write, instead of refusing with `Unsupported`. A valid, CRC-correct copy
/// that this build cannot read must not lose to an older one.
#[test]
fn regression_newer_superblock_with_unknown_incompat_falls_back_to_older_copy() {
    let img = small_image(Finish::Drop);
    let mem = img.mem.duplicate();
    let active = active_slot(&img);
    let mut sb = read_sb(&mem, active);
    sb.incompat |= 1 << 3;
    write_sb(&mem, active, &sb);
    match open(&mem, false) {
        Err(e) => assert!(matches!(e, Error::Unsupported(_)), "{e}"),
        Ok(s) => panic!(
            "opened read-write at the older copy's log {:?} (latest {:?}) although the newer \
             superblock needs an unknown incompat feature",
            key_of(&s),
            img.latest
        ),
    }
}

/// Writes a store by hand: one superblock copy and a snapshot group at cluster 1.
fn handmade(log_start_seq: u64, snapshot: &[Record]) -> MemDevice {
    let mem = MemDevice::with_capacity(1 << 20, 512).unwrap();
    let epoch = 0x1234_5678_9abc_def0u64;
    let sb = Superblock {
        version: SB_VERSION,
        compat: 0,
        ro_compat: 0,
        incompat: 0,
        uuid: [7; 16],
        generation: 1,
        log_unit: 512,
        page_size: 4096,
        cluster_size: 16 * 1024,
        cluster_count: 64,
        log_start: 1,
        log_epoch: epoch,
        log_start_seq,
        checkpoint_count: 0,
    };
    mem.poke(SB_SIZE as u64, &sb.encode());
    let payload = encode_all(snapshot);
    let h = BlockHeader {
        kind: KIND_RECORDS,
        flags: 0,
        epoch,
        seq: log_start_seq,
        prev_crc: chain_seed(epoch),
        payload_len: payload.len() as u32,
        jump_to: 0,
    };
    let mut out = vec![0u8; BlockHeader::padded_len(payload.len(), 512)];
    encode_block(&h, &payload, &mut out);
    mem.poke(16 * 1024, &out);
    mem
}

fn empty_snapshot() -> Vec<Record> {
    vec![
        Record::SnapshotBegin {
            next_blob_id: 1,
            blob_count: 0,
        },
        Record::SnapshotEnd { blob_count: 0 },
    ]
}

#[test]
fn handmade_image_opens() {
    let mem = handmade(1, &empty_snapshot());
    let s = open(&mem, false).unwrap();
    assert!(s.blob_ids().is_empty());
    support::assert_clean(&s);
}

/// Regression (fixed in the library): replay advances the block sequence number with `seq += 1`. A superblock whose
/// (CRC-valid) log start sequence is `u64::MAX`, followed by a matching block, overflows it:
/// a panic in builds with overflow checks (tests, fuzzing), a silent wrap otherwise. The
/// same arithmetic exists in the log writer. Opening must return an error (or wrap
/// deliberately), never panic.
#[test]
fn regression_log_sequence_overflow_panics_at_open() {
    let mem = handmade(u64::MAX, &empty_snapshot());
    let r = catch_unwind(AssertUnwindSafe(|| open(&mem, true).map(|s| key_of(&s))));
    match r {
        Ok(Ok(_)) | Ok(Err(_)) => {}
        Err(_) => panic!("Blobstore::open panicked on a log starting at sequence u64::MAX"),
    }
}

/// Regression (fixed in the library): a snapshot may declare any next blob id, and replay accepts `u64::MAX` (the check
/// does not flag it either). `Transaction::create_blob` then does `next_blob_id += 1`: a
/// panic with overflow checks, a wrap to 0 otherwise (after which ids of deleted blobs are
/// handed out again, breaking "ids are never reused"). Loading should refuse a next blob id
/// that cannot be handed out (or creation should fail cleanly).
#[test]
fn regression_next_blob_id_at_u64_max_overflows_in_transaction() {
    let mem = handmade(
        1,
        &[
            Record::SnapshotBegin {
                next_blob_id: u64::MAX,
                blob_count: 0,
            },
            Record::SnapshotEnd { blob_count: 0 },
        ],
    );
    let s = match open(&mem, false) {
        // Refusing such a snapshot at load is a fine fix.
        Err(e) => {
            assert!(e.is_corruption(), "{e}");
            return;
        }
        Ok(s) => s,
    };
    assert!(matches!(
        s.create_blob(BlobOptions::default()),
        Err(Error::Invalid(_))
    ));
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut t = s.transaction();
        let id = t.create_blob(0);
        (id, t.commit())
    }));
    match r {
        Ok((_, Err(_))) => {}
        Ok((id, Ok(()))) => panic!("created blob {id:?} past the last id"),
        Err(_) => panic!("Transaction::create_blob panicked at next blob id u64::MAX"),
    }
}
