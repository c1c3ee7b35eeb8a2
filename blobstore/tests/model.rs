//! Model-based property test: random sequences of blob operations run against the real
//! store and a plain in-memory model, with clean and dirty reloads in between.
//!
//! The model holds two states: `cur` (what the live store must show) and `durable` (`cur`
//! as of the last successful sync, checkpoint or close). A clean reload (close + open)
//! must show `cur`; a dirty reload (power cut dropping every unflushed write, mem backend
//! only) must show exactly the metadata of `durable`. Data too, except that the store may
//! flush the device on its own (a background checkpoint does), so an io unit that a data
//! operation since the durable point overwrote in place (same device bytes) may hold that
//! operation's contents instead: that is checked per io unit, then adopted by the model.
//! Every blob is compared: ids, size, which clusters are mapped, thin/read-only flags,
//! user and internal xattrs, and (after reloads, on reads and at the end) the full data.
//! Expected failures are asserted by error variant.
//!
//! Operation targets are picked among the blobs the model has (index modulo count), so
//! most operations are valid. Growth is bounded by a cluster budget (live logical
//! clusters plus clusters freed since the last durable point), so the device never runs
//! out of space: an operation that would exceed it is skipped, on the model too.
//!
//! Snapshots and clones: every model blob has a parent link (and `through`, the cluster
//! indexes below which it reads through the parent), so the model knows exactly which blob
//! owns each cluster index, as the store does (every cluster has one owner). A snapshot
//! moves the blob's mapped set to the new read-only blob and clears the blob's; a first
//! write (or a zeroing) of an index a clone reads through an ancestor maps it in the
//! writer; inflate maps every index; decouple maps the indexes the parent owned; an
//! absorbing delete moves the snapshot's indexes the child lacks (below the child's
//! `through`) to the child. So the per-blob mapped comparison stays exact, and the model's
//! data arrays stay self-contained (a clone's bytes are what it reads, ancestors included;
//! `check_model` verifies they agree with the chain). Parent links, `through`, the
//! `family` answers and seek_data/seek_hole are compared too. Cluster budget: physical
//! clusters never exceed the blobs' logical sizes (one owner per cluster, at most one per
//! index of a blob), so snapshot and clone are charged their logical size like a create,
//! and copy-on-write, inflate and decouple need no budget check.
//!
//! Failures proptest finds are kept as plain `regression_*` tests replaying the shrunk
//! sequence (proptest's own persistence file is off). `MODEL_CASES=N` runs more cases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use blobstore::{
    BlobId, BlobOptions, Blobstore, ClusterIdx, Error, FormatOptions, IoChannel, OpenOptions,
    XattrNs, FLAG_READ_ONLY, FLAG_THIN,
};
use driver::mem::CutPolicy;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use support::{pattern, TestDev};

/// User xattr names: a small set so that removes and overwrites hit.
const USER_NAMES: [&[u8]; 4] = [b"a", b"bb", b"user.name", b"d"];
/// Internal xattr names (directory-entry style), moved between blobs by transactions.
const INTERNAL_NAMES: [&[u8]; 3] = [b"entry", b"ino", b"parent"];
/// Resize targets are `0..=MAX_CLUSTERS`; creates use `0..=MAX_CREATE`.
const MAX_CLUSTERS: u64 = 6;
const MAX_CREATE: u64 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Mem,
    Uring,
}

/// One test variant: device geometry, store options, and the cluster budget.
#[derive(Debug)]
struct Cfg {
    backend: Backend,
    capacity: u64,
    lba: u32,
    cluster: u32,
    checkpoint_bytes: Option<u64>,
    /// Upper bound on live logical clusters plus clusters freed since the last durable
    /// point: kept well below the device's clusters minus the metadata reserve and log.
    budget: u64,
}

/// 8 MiB, 512-byte io unit, 16 KiB clusters (512 clusters), a checkpoint whenever the log
/// passes 2 KiB (every few commits).
const MEM_512: Cfg = Cfg {
    backend: Backend::Mem,
    capacity: 8 << 20,
    lba: 512,
    cluster: 16 * 1024,
    checkpoint_bytes: Some(2 * 1024),
    budget: 320,
};

/// 16 MiB, 4 KiB io unit, 64 KiB clusters (256 clusters), default checkpoint threshold.
const MEM_4K: Cfg = Cfg {
    backend: Backend::Mem,
    capacity: 16 << 20,
    lba: 4096,
    cluster: 64 * 1024,
    checkpoint_bytes: None,
    budget: 180,
};

const URING_4K: Cfg = Cfg {
    backend: Backend::Uring,
    ..MEM_4K
};

const URING_512: Cfg = Cfg {
    backend: Backend::Uring,
    ..MEM_512
};

/// An initial xattr of a created blob: namespace, name index, value length.
type Xa = (XattrNs, u8, u8);

/// One operation. Blob fields are indices into the model's blobs (modulo their count);
/// `off`/`len` are raw numbers mapped onto a valid io-unit aligned range of the target.
#[derive(Clone, Debug)]
enum Op {
    Create {
        thin: bool,
        clusters: u8,
        xattrs: Vec<Xa>,
    },
    Delete {
        blob: u8,
    },
    /// Delete (plain and in a transaction) while the blob is open: `Busy`, nothing changes.
    DeleteOpen {
        blob: u8,
    },
    /// `Blob::resize`, or with `txn` a transaction's resize (thick growth is refused).
    Resize {
        blob: u8,
        clusters: u8,
        txn: bool,
    },
    Write {
        blob: u8,
        off: u16,
        len: u16,
    },
    Read {
        blob: u8,
        off: u16,
        len: u16,
    },
    SetXattr {
        blob: u8,
        ns: XattrNs,
        name: u8,
        len: u8,
    },
    RemoveXattr {
        blob: u8,
        ns: XattrNs,
        name: u8,
    },
    /// Transaction: move internal xattr `name` from `from` to `to`, optionally create a
    /// (thin) blob with a user xattr and delete one, all or nothing.
    Move {
        from: u8,
        to: u8,
        name: u8,
        create: Option<u8>,
        delete: Option<u8>,
    },
    Unmap {
        blob: u8,
        off: u16,
        len: u16,
        aligned: bool,
    },
    WriteZeroes {
        blob: u8,
        off: u16,
        len: u16,
        aligned: bool,
    },
    /// Marks read-only, then checks every change to it fails with `ReadOnly`.
    SetReadOnly {
        blob: u8,
    },
    /// Several writes to disjoint ranges (of one or more blobs) in flight at once.
    WriteBatch {
        writes: Vec<(u8, u16, u16)>,
    },
    /// A bad range, misaligned offset or oversized resize: `Invalid` (or `ReadOnly` /
    /// `NoSpace` where those checks come first), nothing changes.
    OutOfRange {
        blob: u8,
        what: u8,
    },
    Sync,
    Checkpoint,
    CleanReload,
    /// Sync, then drop the store without closing and open again: replays the log.
    SyncReopen,
    /// Close, open read-only (compare, changes refused), then open read-write again.
    ReadOnlyReload,
    /// Power cut dropping every unflushed write (mem backend; a clean reload on uring).
    DirtyReload,
    /// `snapshot`: the blob becomes a thin clone of a new read-only blob that takes its
    /// clusters (any blob, read-only ones too).
    Snapshot {
        blob: u8,
    },
    /// `clone_blob` of the `blob`-th read-only blob, or with `any` of any blob (a writable
    /// one is refused with `Invalid`).
    Clone {
        blob: u8,
        any: bool,
    },
    /// `inflate` of the `blob`-th blob with a parent, or with `any` of any blob.
    Inflate {
        blob: u8,
        any: bool,
    },
    /// `decouple_parent` of the `blob`-th blob with a parent, or with `any` of any blob
    /// (one without a parent is refused with `Invalid`).
    Decouple {
        blob: u8,
        any: bool,
    },
    /// `delete_absorbed` of the `blob`-th blob with children, or with `any` of any blob
    /// (one without exactly one child is refused with `Invalid`).
    Absorb {
        blob: u8,
        any: bool,
    },
    /// Delete (plain and in a transaction) of the `blob`-th blob with children: `Invalid`,
    /// nothing changes.
    DeleteParent {
        blob: u8,
    },
}

/// A blob as the model sees it.
#[derive(Clone)]
struct MBlob {
    thin: bool,
    read_only: bool,
    /// Per blob cluster: whether it is mapped to a device cluster.
    mapped: Vec<bool>,
    user: BTreeMap<Vec<u8>, Vec<u8>>,
    internal: BTreeMap<Vec<u8>, Vec<u8>>,
    /// What it reads: its own clusters' bytes, else its ancestors', else zeroes.
    data: Rc<Vec<u8>>,
    /// The blob its unmapped cluster indexes below `through` read from.
    parent: Option<BlobId>,
    /// 0 without a parent.
    through: u64,
}

impl MBlob {
    fn clusters(&self) -> u64 {
        self.mapped.len() as u64
    }

    fn ns_mut(&mut self, ns: XattrNs) -> &mut BTreeMap<Vec<u8>, Vec<u8>> {
        match ns {
            XattrNs::User => &mut self.user,
            XattrNs::Internal => &mut self.internal,
        }
    }

    fn ns(&self, ns: XattrNs) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        match ns {
            XattrNs::User => &self.user,
            XattrNs::Internal => &self.internal,
        }
    }
}

#[derive(Clone, Default)]
struct MState {
    blobs: BTreeMap<BlobId, MBlob>,
    /// Highest id of any blob created in this history: new ids must be above it.
    max_id: u64,
}

impl MState {
    fn logical(&self) -> u64 {
        self.blobs.values().map(MBlob::clusters).sum()
    }

    /// The blob owning what cluster index `idx` of `id` reads (itself or an ancestor, each
    /// link honouring its `through`), `None` for zeroes: `BlobEntry::resolve`.
    fn resolve(&self, id: BlobId, idx: u64) -> Option<BlobId> {
        let mut cur = id;
        loop {
            let b = &self.blobs[&cur];
            match b.mapped.get(idx as usize) {
                None => return None,
                Some(true) => return Some(cur),
                Some(false) => {}
            }
            match b.parent {
                Some(p) if idx < b.through => cur = p,
                _ => return None,
            }
        }
    }

    /// Whether index `idx` of `id` is unmapped and reads an ancestor's cluster.
    fn reads_ancestor(&self, id: BlobId, idx: u64) -> bool {
        self.resolve(id, idx).is_some_and(|o| o != id)
    }

    fn children(&self, id: BlobId) -> Vec<BlobId> {
        self.blobs
            .iter()
            .filter(|(_, b)| b.parent == Some(id))
            .map(|(k, _)| *k)
            .collect()
    }

    fn ancestors(&self, id: BlobId) -> Vec<BlobId> {
        let mut out = Vec::new();
        let mut cur = self.blobs[&id].parent;
        while let Some(p) = cur {
            assert!(out.len() <= self.blobs.len(), "model: parent cycle at {id}");
            out.push(p);
            cur = self.blobs[&p].parent;
        }
        out
    }
}

fn name_of(ns: XattrNs, i: u8) -> &'static [u8] {
    match ns {
        XattrNs::User => USER_NAMES[i as usize % USER_NAMES.len()],
        XattrNs::Internal => INTERNAL_NAMES[i as usize % INTERNAL_NAMES.len()],
    }
}

/// An xattr value unique to (step, which): up to 247 bytes, or 1..8 KB for the top
/// values of `len` (records spanning log blocks and segments).
fn xattr_value(step: u64, which: u64, len: u8) -> Vec<u8> {
    let n = match len {
        0..=247 => usize::from(len),
        _ => usize::from(len - 247) * 1000,
    };
    pattern(step * 8 + which + (1 << 40), 0, n)
}

macro_rules! assert_err {
    ($e:expr, $pat:pat, $($ctx:tt)+) => {
        match $e {
            Err($pat) => {}
            other => panic!(
                "{}: expected {}, got {:?}",
                format!($($ctx)+),
                stringify!($pat),
                other
            ),
        }
    };
}

struct Harness {
    cfg: &'static Cfg,
    td: TestDev,
    store: Option<Blobstore>,
    ch: Option<IoChannel>,
    cur: MState,
    durable: MState,
    /// Clusters freed since the last durable point (not reusable yet).
    pending_free: u64,
    /// Device cluster of every blob cluster at the last durable point.
    durable_map: BTreeMap<BlobId, Vec<ClusterIdx>>,
    /// Device byte ranges (offset, contents) data operations changed since the last
    /// durable point. The store may flush them early (a background checkpoint issues
    /// Flushes), so after a power cut each io unit of a durable blob may hold either its
    /// durable contents or those of any of these that covered the same device bytes.
    unsynced: Vec<(u64, Vec<u8>)>,
    /// Ids of deleted blobs, for NotFound checks.
    deleted: Vec<BlobId>,
    step: u64,
    ctx: String,
    /// Checkpoints a sync wrote by itself (log past `checkpoint_bytes`).
    auto_checkpoints: u64,
    /// Reloads done (clean, dirty).
    reloads: (u64, u64),
    /// Io units found flushed early after a power cut.
    early_units: u64,
    family: FamilyStats,
}

/// Snapshot and clone operations that changed the store, and refusals checked.
#[derive(Debug, Default)]
struct FamilyStats {
    snapshots: u64,
    clones: u64,
    inflates: u64,
    decouples: u64,
    absorbs: u64,
    refused: u64,
}

impl Harness {
    fn new(cfg: &'static Cfg) -> Harness {
        let td = match cfg.backend {
            Backend::Mem => TestDev::mem(cfg.capacity, cfg.lba),
            // In the VM (BLOBFS_TEST_NVME), the NVMe namespace instead of an image file
            // when its LBA size matches.
            Backend::Uring => std::env::var("BLOBFS_TEST_NVME")
                .ok()
                .and_then(|p| TestDev::nvme(&p, cfg.capacity, cfg.lba))
                .unwrap_or_else(|| TestDev::uring(cfg.capacity, cfg.lba)),
        };
        Blobstore::format(
            Arc::clone(&td.dev),
            &FormatOptions {
                cluster_size: cfg.cluster,
                ..FormatOptions::default()
            },
        )
        .unwrap();
        let mut h = Harness {
            cfg,
            td,
            store: None,
            ch: None,
            cur: MState::default(),
            durable: MState::default(),
            pending_free: 0,
            durable_map: BTreeMap::new(),
            unsynced: Vec::new(),
            deleted: Vec::new(),
            step: 0,
            ctx: "format".into(),
            auto_checkpoints: 0,
            reloads: (0, 0),
            early_units: 0,
            family: FamilyStats::default(),
        };
        h.open();
        h
    }

    fn open(&mut self) {
        let store = Blobstore::open(
            Arc::clone(&self.td.dev),
            OpenOptions {
                checkpoint_bytes: self.cfg.checkpoint_bytes,
                ..OpenOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{}: open failed: {e}", self.ctx));
        self.ch = Some(store.channel().unwrap());
        self.store = Some(store);
    }

    fn store(&self) -> &Blobstore {
        self.store.as_ref().unwrap()
    }

    fn cs(&self) -> u64 {
        u64::from(self.cfg.cluster)
    }

    fn unit(&self) -> u64 {
        u64::from(self.cfg.lba)
    }

    fn pick(&self, i: u8) -> Option<BlobId> {
        let n = self.cur.blobs.len();
        (n > 0).then(|| *self.cur.blobs.keys().nth(usize::from(i) % n).unwrap())
    }

    /// The `i`-th (modulo their count) of the blobs `want` accepts.
    fn pick_where(&self, i: u8, want: impl Fn(BlobId, &MBlob) -> bool) -> Option<BlobId> {
        let ids: Vec<BlobId> = self
            .cur
            .blobs
            .iter()
            .filter(|(id, b)| want(**id, b))
            .map(|(id, _)| *id)
            .collect();
        (!ids.is_empty()).then(|| ids[usize::from(i) % ids.len()])
    }

    fn fits(&self, extra: u64) -> bool {
        self.cur.logical() + self.pending_free + extra <= self.cfg.budget
    }

    /// Maps raw numbers onto an io-unit aligned range inside a blob of `size` bytes (> 0).
    /// `aligned`: whole clusters.
    fn range(&self, size: u64, off: u16, len: u16, aligned: bool) -> (u64, u64) {
        let unit = self.unit();
        let upc = self.cs() / unit;
        let total = size / unit;
        let mut o = u64::from(off) % total;
        let l = if aligned {
            o -= o % upc;
            ((u64::from(len) % 3 + 1) * upc).min(total - o)
        } else {
            1 + u64::from(len) % (total - o).min(3 * upc)
        };
        (o * unit, l * unit)
    }

    /// Records that everything done so far is durable (call while the store is open).
    fn mark_durable(&mut self) {
        self.durable = self.cur.clone();
        self.pending_free = 0;
        self.durable_map = self
            .store()
            .export()
            .into_iter()
            .map(|(id, m)| (id, m.clusters))
            .collect();
        self.unsynced.clear();
    }

    /// Notes the device bytes a data operation changed: `data` went to blob bytes
    /// `[off, off + len)` through `map` (the blob's device clusters). `skip(c)`: blob
    /// cluster `c` was not touched on the device.
    fn note_device(
        &mut self,
        map: &[ClusterIdx],
        off: u64,
        data: &[u8],
        skip: impl Fn(u64) -> bool,
    ) {
        let cs = self.cs();
        let end = off + data.len() as u64;
        let mut at = off;
        while at < end {
            let c = at / cs;
            let n = ((c + 1) * cs).min(end) - at;
            let dc = map[c as usize];
            if dc.is_some() && !skip(c) {
                let piece = data[(at - off) as usize..(at - off + n) as usize].to_vec();
                self.unsynced.push((dc.0 * cs + at % cs, piece));
            }
            at += n;
        }
    }

    fn device_map(&self, id: BlobId) -> Vec<ClusterIdx> {
        self.store().blob_meta(id).unwrap().clusters
    }

    fn apply(&mut self, op: &Op) {
        self.step += 1;
        self.ctx = format!("step {} {op:?}", self.step);
        match *op {
            Op::Create {
                thin,
                clusters,
                ref xattrs,
            } => self.create(thin, u64::from(clusters) % (MAX_CREATE + 1), xattrs),
            Op::Delete { blob } => self.delete(blob),
            Op::DeleteOpen { blob } => self.delete_open(blob),
            Op::Resize {
                blob,
                clusters,
                txn,
            } => self.resize(blob, u64::from(clusters) % (MAX_CLUSTERS + 1), txn),
            Op::Write { blob, off, len } => self.write(blob, off, len),
            Op::Read { blob, off, len } => self.read(blob, off, len),
            Op::SetXattr {
                blob,
                ns,
                name,
                len,
            } => self.set_xattr(blob, ns, name, len),
            Op::RemoveXattr { blob, ns, name } => self.remove_xattr(blob, ns, name),
            Op::Move {
                from,
                to,
                name,
                create,
                delete,
            } => self.txn_move(from, to, name, create, delete),
            Op::Unmap {
                blob,
                off,
                len,
                aligned,
            } => self.zero(blob, off, len, aligned, true),
            Op::WriteZeroes {
                blob,
                off,
                len,
                aligned,
            } => self.zero(blob, off, len, aligned, false),
            Op::SetReadOnly { blob } => self.set_read_only(blob),
            Op::WriteBatch { ref writes } => self.write_batch(writes),
            Op::OutOfRange { blob, what } => self.out_of_range(blob, what),
            Op::SyncReopen => {
                self.store()
                    .sync()
                    .unwrap_or_else(|e| panic!("{}: {e}", self.ctx));
                self.mark_durable();
                self.ch = None;
                self.store = None;
                self.reloads.0 += 1;
                self.open();
                self.compare(true);
                self.check_clean();
            }
            Op::ReadOnlyReload => self.read_only_reload(),
            Op::Sync => {
                let before = self.store().info().checkpoint_count;
                self.store()
                    .sync()
                    .unwrap_or_else(|e| panic!("{}: {e}", self.ctx));
                self.auto_checkpoints += self.store().info().checkpoint_count - before;
                self.mark_durable();
                self.check_clean();
            }
            Op::Checkpoint => {
                let before = self.store().info().checkpoint_count;
                self.store()
                    .checkpoint()
                    .unwrap_or_else(|e| panic!("{}: {e}", self.ctx));
                assert!(
                    self.store().info().checkpoint_count > before,
                    "{}: no checkpoint written",
                    self.ctx
                );
                self.mark_durable();
                self.check_clean();
            }
            Op::CleanReload => self.clean_reload(),
            Op::DirtyReload => match self.cfg.backend {
                Backend::Mem => self.dirty_reload(),
                Backend::Uring => self.clean_reload(),
            },
            Op::Snapshot { blob } => self.snapshot(blob),
            Op::Clone { blob, any } => self.clone_blob(blob, any),
            Op::Inflate { blob, any } => self.copy_from_parents(blob, any, true),
            Op::Decouple { blob, any } => self.copy_from_parents(blob, any, false),
            Op::Absorb { blob, any } => self.absorb(blob, any),
            Op::DeleteParent { blob } => {
                if let Some(id) = self.pick_where(blob, |id, _| !self.cur.children(id).is_empty()) {
                    self.delete_refused(id);
                }
            }
        }
        self.compare(false);
    }

    fn create(&mut self, thin: bool, clusters: u64, xattrs: &[Xa]) {
        if !self.fits(clusters) {
            return;
        }
        let xs: Vec<(XattrNs, Vec<u8>, Vec<u8>)> = xattrs
            .iter()
            .enumerate()
            .map(|(i, &(ns, name, len))| {
                (
                    ns,
                    name_of(ns, name).to_vec(),
                    xattr_value(self.step, i as u64, len),
                )
            })
            .collect();
        let id = self
            .store()
            .create_blob(BlobOptions {
                thin,
                clusters,
                xattrs: xs.clone(),
            })
            .unwrap_or_else(|e| panic!("{}: {e}", self.ctx));
        self.new_blob(id, thin, clusters);
        let b = self.cur.blobs.get_mut(&id).unwrap();
        for (ns, name, value) in xs {
            b.ns_mut(ns).insert(name, value);
        }
    }

    /// Checks a new blob's id is above every id of this history, and notes it.
    fn check_new_id(&mut self, id: BlobId) {
        assert!(
            id.0 > self.cur.max_id && !self.cur.blobs.contains_key(&id),
            "{}: new blob id {id} not above {:#x}",
            self.ctx,
            self.cur.max_id
        );
        self.cur.max_id = id.0;
    }

    /// Adds a fresh blob to the model after checking its id.
    fn new_blob(&mut self, id: BlobId, thin: bool, clusters: u64) {
        self.check_new_id(id);
        self.cur.blobs.insert(
            id,
            MBlob {
                thin,
                read_only: false,
                mapped: vec![!thin; clusters as usize],
                user: BTreeMap::new(),
                internal: BTreeMap::new(),
                data: Rc::new(vec![0; (clusters * self.cs()) as usize]),
                parent: None,
                through: 0,
            },
        );
    }

    fn delete(&mut self, blob: u8) {
        let Some(id) = self.pick(blob) else {
            let id = self
                .deleted
                .iter()
                .rev()
                .find(|id| !self.cur.blobs.contains_key(id))
                .copied()
                .unwrap_or(BlobId(1 << 40));
            assert_err!(
                self.store().delete_blob(id),
                Error::NotFound(_),
                "{}",
                self.ctx
            );
            assert_err!(
                self.store().open_blob(id),
                Error::NotFound(_),
                "{}",
                self.ctx
            );
            return;
        };
        if !self.cur.children(id).is_empty() {
            self.delete_refused(id);
            return;
        }
        self.store()
            .delete_blob(id)
            .unwrap_or_else(|e| panic!("{}: {e}", self.ctx));
        let b = self.cur.blobs.remove(&id).unwrap();
        self.pending_free += b.clusters();
        self.deleted.push(id);
        assert_err!(
            self.store().open_blob(id),
            Error::NotFound(_),
            "{}",
            self.ctx
        );
        assert_err!(
            self.store().delete_blob(id),
            Error::NotFound(_),
            "{}",
            self.ctx
        );
    }

    /// Deleting blob `id`, which has children, is refused (plain, and in a transaction
    /// that also creates a blob and shrinks a writable child to nothing, lowering its
    /// `through`): `Invalid`, and nothing of it stays (`compare` after the operation checks
    /// no blob appeared or went and the child's map and link are back; its data here).
    fn delete_refused(&mut self, id: BlobId) {
        assert_err!(
            self.store().delete_blob(id),
            Error::Invalid(_),
            "{}: delete of a blob with children",
            self.ctx
        );
        let child = self
            .cur
            .children(id)
            .into_iter()
            .find(|c| !self.cur.blobs[c].read_only);
        let mut t = self.store().transaction();
        t.create_blob(1);
        if let Some(c) = child {
            t.set_xattr(c, XattrNs::User, b"a", b"undone");
            t.resize(c, 0);
        }
        t.delete_blob(id);
        assert_err!(
            t.commit(),
            Error::Invalid(_),
            "{}: txn delete of a blob with children",
            self.ctx
        );
        if let Some(c) = child {
            self.compare_blob_data(c);
        }
        self.family.refused += 1;
    }

    fn delete_open(&mut self, blob: u8) {
        let Some(id) = self.pick(blob) else { return };
        let handle = self.store().open_blob(id).unwrap();
        assert_err!(self.store().delete_blob(id), Error::Busy(_), "{}", self.ctx);
        // In a transaction, after another change: nothing of it stays.
        let mut t = self.store().transaction();
        t.set_xattr(id, XattrNs::User, b"a", b"txn");
        t.delete_blob(id);
        if self.cur.blobs[&id].read_only {
            assert_err!(t.commit(), Error::ReadOnly(_), "{}", self.ctx);
        } else {
            assert_err!(t.commit(), Error::Busy(_), "{}", self.ctx);
        }
        drop(handle);
    }

    fn resize(&mut self, blob: u8, n: u64, txn: bool) {
        let Some(id) = self.pick(blob) else { return };
        let b = &self.cur.blobs[&id];
        let cur = b.clusters();
        let (ro, thin) = (b.read_only, b.thin);
        if n > cur && !self.fits(n - cur) {
            return;
        }
        let res = if txn {
            let mut t = self.store().transaction();
            t.resize(id, n);
            t.commit()
        } else {
            self.store().open_blob(id).unwrap().resize(n)
        };
        if ro {
            assert_err!(res, Error::ReadOnly(_), "{}", self.ctx);
            return;
        }
        if txn && !thin && n > cur {
            assert_err!(res, Error::Invalid(_), "{}", self.ctx);
            return;
        }
        res.unwrap_or_else(|e| panic!("{}: {e}", self.ctx));
        let cs = self.cs();
        let b = self.cur.blobs.get_mut(&id).unwrap();
        if n < cur {
            self.pending_free += b.mapped[n as usize..].iter().filter(|m| **m).count() as u64;
        }
        b.mapped.resize(n as usize, !thin);
        // A shrink lowers `through`: growing again reads zeroes, not the parent's old data.
        b.through = b.through.min(n);
        Rc::make_mut(&mut b.data).resize((n * cs) as usize, 0);
    }

    fn write(&mut self, blob: u8, off: u16, len: u16) {
        let Some(id) = self.pick(blob) else { return };
        let handle = self.store().open_blob(id).unwrap();
        let b = &self.cur.blobs[&id];
        let size = b.data.len() as u64;
        let ro = b.read_only;
        let ch = self.ch.as_mut().unwrap();
        if size == 0 {
            let data = vec![1u8; self.cfg.lba as usize];
            assert_err!(
                handle.write(ch, 0, &data),
                Error::Invalid(_),
                "{}",
                self.ctx
            );
            return;
        }
        let (o, l) = self.range(size, off, len, false);
        let data = pattern(self.step, o, l as usize);
        let ch = self.ch.as_mut().unwrap();
        let res = handle.write(ch, o, &data);
        if ro {
            assert_err!(res, Error::ReadOnly(_), "{}", self.ctx);
            return;
        }
        res.unwrap_or_else(|e| panic!("{}: write {o}+{l}: {e}", self.ctx));
        let map = self.device_map(id);
        self.note_device(&map, o, &data, |_| false);
        let cs = self.cs();
        let b = self.cur.blobs.get_mut(&id).unwrap();
        Rc::make_mut(&mut b.data)[o as usize..(o + l) as usize].copy_from_slice(&data);
        for c in o / cs..(o + l).div_ceil(cs) {
            b.mapped[c as usize] = true;
        }
    }

    fn read(&mut self, blob: u8, off: u16, len: u16) {
        let Some(id) = self.pick(blob) else { return };
        let handle = self.store().open_blob(id).unwrap();
        let size = self.cur.blobs[&id].data.len() as u64;
        let ch = self.ch.as_mut().unwrap();
        if size == 0 {
            let mut out = vec![0u8; self.cfg.lba as usize];
            assert_err!(
                handle.read(ch, 0, &mut out),
                Error::Invalid(_),
                "{}",
                self.ctx
            );
            return;
        }
        let (o, l) = self.range(size, off, len, false);
        let mut out = vec![0u8; l as usize];
        let ch = self.ch.as_mut().unwrap();
        handle
            .read(ch, o, &mut out)
            .unwrap_or_else(|e| panic!("{}: read {o}+{l}: {e}", self.ctx));
        let want = &self.cur.blobs[&id].data[o as usize..(o + l) as usize];
        assert_same(&self.ctx, id, o, want, &out);
    }

    fn set_xattr(&mut self, blob: u8, ns: XattrNs, name: u8, len: u8) {
        let Some(id) = self.pick(blob) else { return };
        let name = name_of(ns, name);
        let value = xattr_value(self.step, 0, len);
        let res = self
            .store()
            .open_blob(id)
            .unwrap()
            .set_xattr_ns(ns, name, &value);
        let b = self.cur.blobs.get_mut(&id).unwrap();
        if b.read_only {
            assert_err!(res, Error::ReadOnly(_), "{}", self.ctx);
            return;
        }
        res.unwrap_or_else(|e| panic!("{}: {e}", self.ctx));
        b.ns_mut(ns).insert(name.to_vec(), value);
    }

    fn remove_xattr(&mut self, blob: u8, ns: XattrNs, name: u8) {
        let Some(id) = self.pick(blob) else { return };
        let name = name_of(ns, name);
        let res = self
            .store()
            .open_blob(id)
            .unwrap()
            .remove_xattr_ns(ns, name);
        let b = self.cur.blobs.get_mut(&id).unwrap();
        if b.read_only {
            assert_err!(res, Error::ReadOnly(_), "{}", self.ctx);
        } else if !b.ns(ns).contains_key(name) {
            assert_err!(res, Error::NoXattr(_), "{}", self.ctx);
        } else {
            res.unwrap_or_else(|e| panic!("{}: {e}", self.ctx));
            b.ns_mut(ns).remove(name);
        }
    }

    fn txn_move(&mut self, from: u8, to: u8, name: u8, create: Option<u8>, delete: Option<u8>) {
        let (Some(a), Some(b)) = (self.pick(from), self.pick(to)) else {
            return;
        };
        let name = name_of(XattrNs::Internal, name);
        let value = self.cur.blobs[&a].internal.get(name).cloned();
        let create = create
            .map(|c| u64::from(c) % (MAX_CREATE + 1))
            .filter(|c| self.fits(*c));
        let delete = delete.and_then(|d| self.pick(d));
        let mut t = self.store().transaction();
        t.remove_xattr(a, XattrNs::Internal, name);
        let v = value.clone().unwrap_or_else(|| b"missing".to_vec());
        t.set_xattr(b, XattrNs::Internal, name, &v);
        let new = create.map(|c| (t.create_blob(c), c));
        // The new blob gets a user xattr in the same transaction.
        let tag = xattr_value(self.step, 7, 20);
        if let Some((id, _)) = new {
            t.set_xattr(id, XattrNs::User, b"bb", &tag);
        }
        if let Some(d) = delete {
            t.delete_blob(d);
        }
        let res = t.commit();
        let ro = self.cur.blobs[&a].read_only || self.cur.blobs[&b].read_only;
        if ro {
            assert_err!(res, Error::ReadOnly(_), "{}", self.ctx);
            return;
        }
        let Some(value) = value else {
            assert_err!(res, Error::NoXattr(_), "{}", self.ctx);
            return;
        };
        if delete.is_some_and(|d| !self.cur.children(d).is_empty()) {
            assert_err!(res, Error::Invalid(_), "{}: delete of a parent", self.ctx);
            self.family.refused += 1;
            return;
        }
        res.unwrap_or_else(|e| panic!("{}: {e}", self.ctx));
        self.cur
            .blobs
            .get_mut(&a)
            .unwrap()
            .internal
            .remove(name)
            .unwrap();
        self.cur
            .blobs
            .get_mut(&b)
            .unwrap()
            .internal
            .insert(name.to_vec(), value);
        if let Some((id, c)) = new {
            self.new_blob(id, true, c);
            let nb = self.cur.blobs.get_mut(&id).unwrap();
            nb.user.insert(b"bb".to_vec(), tag);
        }
        if let Some(d) = delete {
            let gone = self.cur.blobs.remove(&d).unwrap();
            self.pending_free += gone.clusters();
            self.deleted.push(d);
        }
    }

    fn zero(&mut self, blob: u8, off: u16, len: u16, aligned: bool, unmap: bool) {
        let Some(id) = self.pick(blob) else { return };
        let handle = self.store().open_blob(id).unwrap();
        let b = &self.cur.blobs[&id];
        let size = b.data.len() as u64;
        let ro = b.read_only;
        let unit = self.unit();
        let ch = self.ch.as_mut().unwrap();
        let call = |ch: &mut IoChannel, o: u64, l: u64| {
            if unmap {
                handle.unmap(ch, o, l)
            } else {
                handle.write_zeroes(ch, o, l)
            }
        };
        if size == 0 {
            assert_err!(call(ch, 0, unit), Error::Invalid(_), "{}", self.ctx);
            return;
        }
        let (o, l) = self.range(size, off, len, aligned);
        let map = self.device_map(id);
        let ch = self.ch.as_mut().unwrap();
        let res = call(ch, o, l);
        if ro {
            assert_err!(res, Error::ReadOnly(_), "{}", self.ctx);
            return;
        }
        res.unwrap_or_else(|e| panic!("{}: zero {o}+{l}: {e}", self.ctx));
        let cs = self.cs();
        let b = &self.cur.blobs[&id];
        let (thin, through) = (b.thin, b.through);
        // Whole clusters of a thin blob are released without touching the device, except
        // where a clone reads through its parent (releasing would expose the parent's data
        // again: they are zeroed in place).
        let released = |c: u64| thin && c >= through && c * cs >= o && (c + 1) * cs <= o + l;
        // Unmapped indexes reading an ancestor's data are zeroed by a copy-on-write write,
        // which maps them (in a fresh cluster: no durable device bytes change).
        let copied: Vec<u64> = (o / cs..(o + l).div_ceil(cs))
            .filter(|&c| self.cur.reads_ancestor(id, c))
            .collect();
        self.note_device(&map, o, &vec![0; l as usize], released);
        let b = self.cur.blobs.get_mut(&id).unwrap();
        Rc::make_mut(&mut b.data)[o as usize..(o + l) as usize].fill(0);
        for c in copied {
            b.mapped[c as usize] = true;
        }
        for c in o.div_ceil(cs)..(o + l) / cs {
            if released(c) && std::mem::take(&mut b.mapped[c as usize]) {
                self.pending_free += 1;
            }
        }
    }

    fn set_read_only(&mut self, blob: u8) {
        let Some(id) = self.pick(blob) else { return };
        let handle = self.store().open_blob(id).unwrap();
        handle
            .set_read_only()
            .unwrap_or_else(|e| panic!("{}: {e}", self.ctx));
        assert!(handle.is_read_only());
        self.cur.blobs.get_mut(&id).unwrap().read_only = true;
        // Every change to it is refused now.
        let size = self.cur.blobs[&id].data.len() as u64;
        let unit = self.unit();
        let ctx = &self.ctx;
        let ch = self.ch.as_mut().unwrap();
        if size == 0 {
            let data = vec![1u8; unit as usize];
            assert_err!(
                handle.write(ch, 0, &data),
                Error::Invalid(_),
                "{ctx}: write"
            );
        } else {
            let data = vec![1u8; unit as usize];
            assert_err!(
                handle.write(ch, size - unit, &data),
                Error::ReadOnly(_),
                "{ctx}: write"
            );
            assert_err!(
                handle.unmap(ch, 0, unit),
                Error::ReadOnly(_),
                "{ctx}: unmap"
            );
            assert_err!(
                handle.write_zeroes(ch, 0, size),
                Error::ReadOnly(_),
                "{ctx}: write_zeroes"
            );
        }
        assert_err!(
            handle.set_xattr(b"a", b"ro"),
            Error::ReadOnly(_),
            "{ctx}: set_xattr"
        );
        assert_err!(
            handle.set_xattr_ns(XattrNs::Internal, b"entry", b"ro"),
            Error::ReadOnly(_),
            "{ctx}: set internal xattr"
        );
        assert_err!(
            handle.remove_xattr(b"a"),
            Error::ReadOnly(_),
            "{ctx}: remove_xattr"
        );
        assert_err!(
            handle.resize(size / self.cs() + 1),
            Error::ReadOnly(_),
            "{ctx}: grow"
        );
        assert_err!(handle.resize(0), Error::ReadOnly(_), "{ctx}: shrink");
        let mut t = self.store().transaction();
        t.set_xattr(id, XattrNs::Internal, b"ino", b"ro");
        assert_err!(t.commit(), Error::ReadOnly(_), "{ctx}: txn set_xattr");
        let mut t = self.store().transaction();
        t.resize(id, 0);
        assert_err!(t.commit(), Error::ReadOnly(_), "{ctx}: txn resize");
        drop(handle);
        // Nothing of it stuck, data included.
        self.compare_blob_data(id);
    }

    fn snapshot(&mut self, blob: u8) {
        let Some(id) = self.pick(blob) else { return };
        // Charged like a create of the blob's size (it moves clusters, allocates none).
        if !self.fits(self.cur.blobs[&id].clusters()) {
            return;
        }
        let snap = self
            .store()
            .snapshot(id)
            .unwrap_or_else(|e| panic!("{}: snapshot of {id}: {e}", self.ctx));
        self.check_new_id(snap);
        let b = self.cur.blobs.get_mut(&id).unwrap();
        let none = vec![false; b.mapped.len()];
        let s = MBlob {
            thin: true,
            read_only: true,
            // It takes every cluster of the blob, and the chain the blob read through.
            mapped: std::mem::replace(&mut b.mapped, none),
            user: b.user.clone(),
            internal: b.internal.clone(),
            data: Rc::clone(&b.data),
            parent: b.parent,
            through: b.through,
        };
        b.thin = true;
        b.parent = Some(snap);
        b.through = s.clusters();
        self.cur.blobs.insert(snap, s);
        self.family.snapshots += 1;
        self.compare_blob_data(id);
        self.compare_blob_data(snap);
    }

    fn clone_blob(&mut self, blob: u8, any: bool) {
        let pick = if any {
            self.pick(blob)
        } else {
            self.pick_where(blob, |_, b| b.read_only)
        };
        let Some(snap) = pick else { return };
        let s = &self.cur.blobs[&snap];
        if !s.read_only {
            assert_err!(
                self.store().clone_blob(snap),
                Error::Invalid(_),
                "{}: clone of a writable blob",
                self.ctx
            );
            self.family.refused += 1;
            return;
        }
        if !self.fits(s.clusters()) {
            return;
        }
        let id = self
            .store()
            .clone_blob(snap)
            .unwrap_or_else(|e| panic!("{}: clone of {snap}: {e}", self.ctx));
        self.check_new_id(id);
        let s = &self.cur.blobs[&snap];
        let c = MBlob {
            thin: true,
            read_only: false,
            mapped: vec![false; s.mapped.len()],
            user: s.user.clone(),
            internal: s.internal.clone(),
            data: Rc::clone(&s.data),
            parent: Some(snap),
            through: s.clusters(),
        };
        self.cur.blobs.insert(id, c);
        self.family.clones += 1;
        self.compare_blob_data(id);
    }

    /// `inflate` (`all`) or `decouple_parent`. Each copied index gets a cluster of the
    /// blob's own; the budget needs no check (see the top comment).
    fn copy_from_parents(&mut self, blob: u8, any: bool, all: bool) {
        let pick = if any {
            self.pick(blob)
        } else {
            self.pick_where(blob, |_, b| b.parent.is_some())
        };
        let Some(id) = pick else { return };
        let b = &self.cur.blobs[&id];
        let (parent, ro) = (b.parent, b.read_only);
        // The indexes the store writes: inflate every unmapped one (zeroes where nothing is
        // read), decouple those the parent itself owns.
        let copies: Vec<u64> = (0..b.clusters())
            .filter(|&i| !b.mapped[i as usize])
            .filter(|&i| {
                all || parent.is_some_and(|p| {
                    i < b.through && self.cur.blobs[&p].mapped.get(i as usize) == Some(&true)
                })
            })
            .collect();
        let res = if all {
            self.store().inflate(id)
        } else {
            self.store().decouple_parent(id)
        };
        let what = if all { "inflate" } else { "decouple" };
        // A snapshot (read-only blob) never has its links changed, even when nothing would
        // need copying: refused first.
        if ro {
            assert_err!(
                res,
                Error::ReadOnly(_),
                "{}: {what} of a read-only blob",
                self.ctx
            );
            self.family.refused += 1;
            return;
        }
        if parent.is_none() && !all {
            assert_err!(
                res,
                Error::Invalid(_),
                "{}: decouple without a parent",
                self.ctx
            );
            self.family.refused += 1;
            return;
        }
        let _ = &copies;
        res.unwrap_or_else(|e| panic!("{}: {what} of {id}: {e}", self.ctx));
        let (link, link_through) = match parent {
            Some(p) if !all => {
                let pb = &self.cur.blobs[&p];
                match pb.parent {
                    Some(g) => (Some(g), self.cur.blobs[&id].through.min(pb.through)),
                    None => (None, 0),
                }
            }
            _ => (None, 0),
        };
        let b = self.cur.blobs.get_mut(&id).unwrap();
        for i in copies {
            b.mapped[i as usize] = true;
        }
        b.parent = link;
        b.through = link_through;
        if all {
            let m = self.store().blob_meta(id).unwrap();
            assert_eq!(
                m.allocated(),
                m.clusters.len() as u64,
                "{}: inflated blob {id} not fully allocated",
                self.ctx
            );
            self.family.inflates += 1;
        } else {
            self.family.decouples += 1;
        }
        self.compare_blob_data(id);
    }

    fn absorb(&mut self, blob: u8, any: bool) {
        let pick = if any {
            self.pick(blob)
        } else {
            self.pick_where(blob, |id, _| !self.cur.children(id).is_empty())
        };
        let Some(snap) = pick else { return };
        let kids = self.cur.children(snap);
        let res = self.store().delete_absorbed(snap);
        let [child] = kids[..] else {
            assert_err!(
                res,
                Error::Invalid(_),
                "{}: absorbing delete of a blob with {} children",
                self.ctx,
                kids.len()
            );
            self.family.refused += 1;
            return;
        };
        res.unwrap_or_else(|e| panic!("{}: absorbing delete of {snap}: {e}", self.ctx));
        let s = self.cur.blobs.remove(&snap).unwrap();
        let c = self.cur.blobs.get_mut(&child).unwrap();
        // `MoveClusters { count: child's through }`: what the child read through it.
        let n = (c.through as usize).min(s.mapped.len()).min(c.mapped.len());
        for i in 0..n {
            c.mapped[i] |= s.mapped[i];
        }
        (c.parent, c.through) = match s.parent {
            Some(p) => (Some(p), c.through.min(s.through)),
            None => (None, 0),
        };
        self.deleted.push(snap);
        // It synced: everything so far is durable (the rest of the snapshot's clusters
        // were freed by a commit that is durable too).
        self.mark_durable();
        self.family.absorbs += 1;
        assert_err!(
            self.store().open_blob(snap),
            Error::NotFound(_),
            "{}",
            self.ctx
        );
        self.compare_blob_data(child);
    }

    fn write_batch(&mut self, writes: &[(u8, u16, u16)]) {
        let mut handles = BTreeMap::new();
        let mut planned: Vec<(BlobId, u64, u64)> = Vec::new();
        for &(blob, off, len) in writes {
            let Some(id) = self.pick(blob) else { return };
            let b = &self.cur.blobs[&id];
            let size = b.data.len() as u64;
            if size == 0 || b.read_only {
                continue;
            }
            let (o, l) = self.range(size, off, len, false);
            if planned
                .iter()
                .any(|&(i, po, pl)| i == id && o < po + pl && po < o + l)
            {
                continue;
            }
            planned.push((id, o, l));
            if let std::collections::btree_map::Entry::Vacant(e) = handles.entry(id) {
                e.insert(self.store().open_blob(id).unwrap());
            }
        }
        let dev = Arc::clone(self.store().device());
        let tag0 = (1 << 48) + self.step * 8;
        let ch = self.ch.as_mut().unwrap();
        for (k, &(id, o, l)) in planned.iter().enumerate() {
            let mut buf = dev.alloc_buf(l as usize);
            buf.as_mut_slice()
                .copy_from_slice(&pattern(tag0 + k as u64, o, l as usize));
            ch.submit_write(&handles[&id], o, buf, k as u64)
                .map_err(|(e, _)| e)
                .unwrap_or_else(|e| panic!("{}: submit {k}: {e}", self.ctx));
        }
        let mut done = Vec::new();
        while ch.in_flight() > 0 {
            ch.wait(&mut done);
        }
        assert_eq!(done.len(), planned.len(), "{}: completions", self.ctx);
        for c in done {
            c.result
                .unwrap_or_else(|e| panic!("{}: write {}: {e}", self.ctx, c.tag));
        }
        let cs = self.cs();
        for (k, &(id, o, l)) in planned.iter().enumerate() {
            let data = pattern(tag0 + k as u64, o, l as usize);
            let map = self.device_map(id);
            self.note_device(&map, o, &data, |_| false);
            let b = self.cur.blobs.get_mut(&id).unwrap();
            Rc::make_mut(&mut b.data)[o as usize..(o + l) as usize].copy_from_slice(&data);
            for c in o / cs..(o + l).div_ceil(cs) {
                b.mapped[c as usize] = true;
            }
        }
        drop(handles);
        for id in planned
            .iter()
            .map(|p| p.0)
            .collect::<std::collections::BTreeSet<_>>()
        {
            self.compare_blob_data(id);
        }
    }

    fn out_of_range(&mut self, blob: u8, what: u8) {
        let Some(id) = self.pick(blob) else { return };
        let handle = self.store().open_blob(id).unwrap();
        let b = &self.cur.blobs[&id];
        let (size, ro, thin) = (b.data.len() as u64, b.read_only, b.thin);
        let unit = self.unit();
        let huge = self.cfg.capacity / self.cs() + 1;
        let ctx = self.ctx.clone();
        let ch = self.ch.as_mut().unwrap();
        let data = vec![7u8; 2 * unit as usize];
        let mut out = vec![0u8; 2 * unit as usize];
        match what % 7 {
            0 => assert_err!(
                handle.write(ch, size, &data[..unit as usize]),
                Error::Invalid(_),
                "{ctx}: write past the end"
            ),
            1 => assert_err!(
                handle.read(ch, size.saturating_sub(unit), &mut out),
                Error::Invalid(_),
                "{ctx}: read across the end"
            ),
            2 => assert_err!(
                handle.write(ch, unit / 2, &data[..unit as usize]),
                Error::Invalid(_),
                "{ctx}: misaligned write"
            ),
            3 => assert_err!(
                handle.write(ch, 0, &data[..unit as usize / 2]),
                Error::Invalid(_),
                "{ctx}: partial-unit write"
            ),
            4 => assert_err!(
                handle.unmap(ch, size, unit),
                Error::Invalid(_),
                "{ctx}: unmap past the end"
            ),
            5 => {
                let res = handle.resize(huge);
                if ro {
                    assert_err!(res, Error::ReadOnly(_), "{ctx}: huge resize");
                } else if thin {
                    assert_err!(res, Error::Invalid(_), "{ctx}: huge resize");
                } else {
                    assert_err!(res, Error::NoSpace(_), "{ctx}: huge resize");
                }
            }
            _ => {
                let mut t = self.store().transaction();
                t.resize(id, huge);
                if ro {
                    assert_err!(t.commit(), Error::ReadOnly(_), "{ctx}: txn huge resize");
                } else {
                    assert_err!(t.commit(), Error::Invalid(_), "{ctx}: txn huge resize");
                }
            }
        }
        drop(handle);
        self.compare_blob_data(id);
    }

    fn read_only_reload(&mut self) {
        self.ch = None;
        self.mark_durable();
        let store = self.store.take().unwrap();
        store
            .close()
            .unwrap_or_else(|e| panic!("{}: close: {e}", self.ctx));
        self.reloads.0 += 1;
        let ro = Blobstore::open(
            Arc::clone(&self.td.dev),
            OpenOptions {
                read_only: true,
                ..OpenOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{}: read-only open: {e}", self.ctx));
        assert!(ro.is_read_only());
        self.ch = Some(ro.channel().unwrap());
        self.store = Some(ro);
        self.compare(true);
        self.check_clean();
        let ctx = self.ctx.clone();
        assert_err!(
            self.store().create_blob(BlobOptions::default()),
            Error::ReadOnly(_),
            "{ctx}: create on a read-only store"
        );
        if let Some(id) = self.pick(0) {
            let handle = self.store().open_blob(id).unwrap();
            assert_err!(
                handle.set_xattr(b"a", b"x"),
                Error::ReadOnly(_),
                "{ctx}: set_xattr on a read-only store"
            );
            assert_err!(
                self.store().delete_blob(id),
                Error::ReadOnly(_),
                "{ctx}: delete on a read-only store"
            );
            if handle.size() > 0 {
                let data = vec![1u8; self.cfg.lba as usize];
                assert_err!(
                    handle.write(self.ch.as_mut().unwrap(), 0, &data),
                    Error::ReadOnly(_),
                    "{ctx}: write on a read-only store"
                );
            }
        }
        assert_err!(
            self.store().checkpoint(),
            Error::ReadOnly(_),
            "{ctx}: checkpoint on a read-only store"
        );
        self.ch = None;
        self.store.take().unwrap().close().unwrap();
        self.open();
        self.compare(true);
    }

    fn clean_reload(&mut self) {
        self.ch = None;
        self.mark_durable();
        let store = self.store.take().unwrap();
        store
            .close()
            .unwrap_or_else(|e| panic!("{}: close: {e}", self.ctx));
        self.reloads.0 += 1;
        self.open();
        self.compare(true);
        self.check_clean();
    }

    fn dirty_reload(&mut self) {
        self.ch = None;
        let mem = self.td.mem.take().unwrap();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(self.step);
        let img = mem.power_cut(CutPolicy::DropAll, &mut rng);
        self.store = None;
        self.td.dev = Arc::new(img.clone());
        self.td.mem = Some(img);
        self.cur = self.durable.clone();
        self.pending_free = 0;
        self.reloads.1 += 1;
        self.open();
        self.compare(false);
        self.adopt_early_flushed();
        self.mark_durable();
        self.compare(true);
        self.check_clean();
    }

    /// After a power cut: checks every io unit of every blob holds its durable contents or
    /// those of a data operation since that reached the same device bytes (flushed early
    /// by the store), and takes what is there as the model's data.
    fn adopt_early_flushed(&mut self) {
        let cs = self.cs();
        let unit = self.unit() as usize;
        let ids: Vec<BlobId> = self.cur.blobs.keys().copied().collect();
        for id in ids {
            let want = Rc::clone(&self.cur.blobs[&id].data);
            if want.is_empty() {
                continue;
            }
            let handle = self.store().open_blob(id).unwrap();
            let mut got = vec![0u8; want.len()];
            handle
                .read(self.ch.as_mut().unwrap(), 0, &mut got)
                .unwrap_or_else(|e| panic!("{}: read blob {id}: {e}", self.ctx));
            if got == *want {
                continue;
            }
            let map = &self.durable_map[&id];
            for (i, (w, g)) in want.chunks(unit).zip(got.chunks(unit)).enumerate() {
                if w == g {
                    continue;
                }
                let at = (i * unit) as u64;
                let dc = map[(at / cs) as usize];
                let dev = dc.0 * cs + at % cs;
                let plausible = dc.is_some()
                    && self.unsynced.iter().any(|(off, d)| {
                        *off <= dev
                            && dev + unit as u64 <= off + d.len() as u64
                            && d[(dev - off) as usize..(dev - off) as usize + unit] == *g
                    });
                if !plausible {
                    assert_same(&self.ctx, id, at, w, g);
                }
                self.early_units += 1;
            }
            self.cur.blobs.get_mut(&id).unwrap().data = Rc::new(got);
        }
    }

    /// `support::assert_clean`, with the step in the message.
    fn check_clean(&self) {
        let r = self.store().check().unwrap();
        assert!(
            r.is_clean(),
            "{}: consistency check: {:#?}",
            self.ctx,
            r.problems
        );
    }

    /// Compares the store's metadata (and with `data` every blob's contents) to `cur`.
    fn compare(&mut self, data: bool) {
        let got = self.store().export();
        let want_ids: Vec<BlobId> = self.cur.blobs.keys().copied().collect();
        let got_ids: Vec<BlobId> = got.keys().copied().collect();
        assert_eq!(got_ids, want_ids, "{}: blob ids", self.ctx);
        assert_eq!(
            self.store().info().blob_count,
            want_ids.len() as u64,
            "{}: blob count",
            self.ctx
        );
        for (id, m) in &got {
            let w = &self.cur.blobs[id];
            let ctx = format!("{}: blob {id}", self.ctx);
            assert_eq!(m.clusters.len() as u64, w.clusters(), "{ctx}: clusters");
            assert_eq!(m.flags & FLAG_THIN != 0, w.thin, "{ctx}: thin flag");
            assert_eq!(
                m.flags & FLAG_READ_ONLY != 0,
                w.read_only,
                "{ctx}: read-only flag"
            );
            assert_eq!(
                m.flags & !(FLAG_THIN | FLAG_READ_ONLY),
                0,
                "{ctx}: stray flags"
            );
            let mapped: Vec<bool> = m.clusters.iter().map(|c| c.is_some()).collect();
            assert_eq!(mapped, w.mapped, "{ctx}: mapped clusters");
            assert_eq!(m.xattrs, w.user, "{ctx}: user xattrs");
            assert_eq!(m.internal, w.internal, "{ctx}: internal xattrs");
            assert_eq!(m.parent, w.parent.unwrap_or(BlobId(0)), "{ctx}: parent");
            assert_eq!(m.through, w.through, "{ctx}: through");
            let f = self.store().family(*id).unwrap();
            assert_eq!(f.ancestors, self.cur.ancestors(*id), "{ctx}: ancestors");
            let mut children = f.children;
            children.sort();
            assert_eq!(children, self.cur.children(*id), "{ctx}: children");
        }
        if data {
            self.check_model();
            for id in want_ids {
                self.compare_blob_data(id);
                self.compare_holes(id);
            }
        }
    }

    /// The model's own consistency: every unmapped index of a blob holds what it reads
    /// through the chain (its owner's bytes, else zeroes). A failure here is a model bug.
    fn check_model(&self) {
        let cs = self.cs() as usize;
        let zeroes = vec![0u8; cs];
        for (id, b) in &self.cur.blobs {
            for (i, _) in b.mapped.iter().enumerate().filter(|(_, m)| !**m) {
                let want = match self.cur.resolve(*id, i as u64) {
                    Some(o) => &self.cur.blobs[&o].data[i * cs..(i + 1) * cs],
                    None => &zeroes[..],
                };
                assert_same(
                    &format!("{}: model blob {id} vs its chain", self.ctx),
                    *id,
                    (i * cs) as u64,
                    want,
                    &b.data[i * cs..(i + 1) * cs],
                );
            }
        }
    }

    /// `Blob::parent`, `seek_data` and `seek_hole` against the model's chains.
    fn compare_holes(&self, id: BlobId) {
        let handle = self.store().open_blob(id).unwrap();
        let b = &self.cur.blobs[&id];
        let ctx = format!("{}: blob {id}", self.ctx);
        assert_eq!(handle.parent(), b.parent, "{ctx}: Blob::parent");
        let (cs, n) = (self.cs(), b.clusters());
        let has = |i: u64| self.cur.resolve(id, i).is_some();
        for i in 0..n {
            // Cluster starts, and (odd clusters) an offset inside.
            let at = i * cs + (i % 2) * self.unit();
            let data = (i..n).find(|&j| has(j)).map(|j| (j * cs).max(at));
            let hole = (i..n)
                .find(|&j| !has(j))
                .map_or(n * cs, |j| (j * cs).max(at));
            assert_eq!(handle.seek_data(at), data, "{ctx}: seek_data({at})");
            assert_eq!(handle.seek_hole(at), hole, "{ctx}: seek_hole({at})");
        }
    }

    fn compare_blob_data(&mut self, id: BlobId) {
        let want = Rc::clone(&self.cur.blobs[&id].data);
        if want.is_empty() {
            return;
        }
        let handle = self.store().open_blob(id).unwrap();
        assert_eq!(
            handle.size(),
            want.len() as u64,
            "{}: blob {id} size",
            self.ctx
        );
        let mut out = vec![0u8; want.len()];
        handle
            .read(self.ch.as_mut().unwrap(), 0, &mut out)
            .unwrap_or_else(|e| panic!("{}: read blob {id}: {e}", self.ctx));
        assert_same(&self.ctx, id, 0, &want, &out);
    }

    fn finish(mut self) {
        if std::env::var_os("MODEL_STATS").is_some() {
            let i = self.store().info();
            eprintln!(
                "model stats {:?}/{}: {} ops, {} blobs ({} clusters), reloads clean {} dirty {}, \
                 {} checkpoints ({} by sync), log {} bytes, {} io units flushed early, {:?}",
                self.cfg.backend,
                self.cfg.lba,
                self.step,
                self.cur.blobs.len(),
                self.cur.logical(),
                self.reloads.0,
                self.reloads.1,
                i.checkpoint_count,
                self.auto_checkpoints,
                i.log_bytes,
                self.early_units,
                self.family,
            );
        }
        self.ctx = "end".into();
        self.compare(true);
        self.check_clean();
        self.clean_reload();
    }
}

/// Asserts a read returned the model's bytes; reports the first differing io unit.
fn assert_same(ctx: &str, id: BlobId, at: u64, want: &[u8], got: &[u8]) {
    if want == got {
        return;
    }
    let i = want.iter().zip(got).position(|(a, b)| a != b).unwrap();
    let s = i - i % 512;
    let e = (s + 32).min(want.len());
    panic!(
        "{ctx}: blob {id} data differs at byte {} (read from {at}): want {:02x?}.. got {:02x?}..",
        at + i as u64,
        &want[s..e],
        &got[s..e]
    );
}

fn run(cfg: &'static Cfg, ops: &[Op]) {
    let mut h = Harness::new(cfg);
    for op in ops {
        h.apply(op);
    }
    h.finish();
}

/// A fixed walk through snapshots and clones (proptest's seeds vary from run to run): a
/// chain of two snapshots, copy-on-write in the blob and in a clone, a clone shrunk and
/// grown, zeroing a range read through the parent, a power cut, decouple, refused deletes
/// and absorbs, inflate, an absorbing delete, reloads.
#[test]
fn snapshots_and_clones_walk() {
    let mut h = Harness::new(&MEM_512);
    let ops = [
        Op::Create {
            thin: false,
            clusters: 4,
            xattrs: vec![(XattrNs::User, 1, 30), (XattrNs::Internal, 0, 250)],
        },
        Op::Write {
            blob: 0,
            off: 0,
            len: 100,
        },
        Op::Sync,
        Op::Snapshot { blob: 0 },
        // Blob 1 now reads everything through snapshot 2: a partial write copies.
        Op::Write {
            blob: 0,
            off: 40,
            len: 10,
        },
        Op::Clone {
            blob: 0,
            any: false,
        },
        Op::Clone { blob: 0, any: true },
        Op::Write {
            blob: 2,
            off: 3,
            len: 2,
        },
        Op::Snapshot { blob: 0 },
        Op::Resize {
            blob: 2,
            clusters: 1,
            txn: false,
        },
        Op::Resize {
            blob: 2,
            clusters: 3,
            txn: true,
        },
        Op::Unmap {
            blob: 0,
            off: 0,
            len: 40,
            aligned: true,
        },
        Op::WriteZeroes {
            blob: 2,
            off: 1,
            len: 1,
            aligned: false,
        },
        Op::Sync,
        Op::Write {
            blob: 0,
            off: 70,
            len: 30,
        },
        Op::DirtyReload,
        Op::Decouple {
            blob: 0,
            any: false,
        },
        Op::DeleteParent { blob: 0 },
        Op::Absorb {
            blob: 0,
            any: false,
        },
        Op::Inflate {
            blob: 0,
            any: false,
        },
        Op::CleanReload,
        Op::Delete { blob: 3 },
        Op::Absorb {
            blob: 0,
            any: false,
        },
        Op::Write {
            blob: 1,
            off: 0,
            len: 511,
        },
        Op::DirtyReload,
    ];
    for op in &ops {
        h.apply(op);
    }
    let f = &h.family;
    assert_eq!(
        (f.snapshots, f.clones, f.decouples, f.inflates, f.absorbs),
        (2, 1, 1, 1, 1),
        "{f:?}"
    );
    assert!(f.refused >= 3, "{f:?}");
    h.finish();
}

fn ns() -> impl Strategy<Value = XattrNs> {
    prop_oneof![Just(XattrNs::User), Just(XattrNs::Internal)]
}

fn op(dirty: bool) -> impl Strategy<Value = Op> {
    let blob = any::<u8>;
    let off = any::<u16>;
    let len = || 0..512u16;
    prop_oneof![
        6 => (any::<bool>(), 0..=MAX_CREATE as u8, prop::collection::vec((ns(), 0..8u8, any::<u8>()), 0..3))
            .prop_map(|(thin, clusters, xattrs)| Op::Create { thin, clusters, xattrs }),
        2 => blob().prop_map(|blob| Op::Delete { blob }),
        1 => blob().prop_map(|blob| Op::DeleteOpen { blob }),
        3 => (blob(), 0..=MAX_CLUSTERS as u8, any::<bool>())
            .prop_map(|(blob, clusters, txn)| Op::Resize { blob, clusters, txn }),
        8 => (blob(), off(), len()).prop_map(|(blob, off, len)| Op::Write { blob, off, len }),
        3 => (blob(), off(), len()).prop_map(|(blob, off, len)| Op::Read { blob, off, len }),
        4 => (blob(), ns(), 0..8u8, any::<u8>())
            .prop_map(|(blob, ns, name, len)| Op::SetXattr { blob, ns, name, len }),
        3 => (blob(), ns(), 0..8u8).prop_map(|(blob, ns, name)| Op::RemoveXattr { blob, ns, name }),
        3 => (blob(), blob(), 0..3u8, prop::option::of(0..=MAX_CREATE as u8), prop::option::weighted(0.3, blob()))
            .prop_map(|(from, to, name, create, delete)| Op::Move { from, to, name, create, delete }),
        2 => (blob(), off(), len(), any::<bool>())
            .prop_map(|(blob, off, len, aligned)| Op::Unmap { blob, off, len, aligned }),
        2 => (blob(), off(), len(), any::<bool>())
            .prop_map(|(blob, off, len, aligned)| Op::WriteZeroes { blob, off, len, aligned }),
        1 => blob().prop_map(|blob| Op::SetReadOnly { blob }),
        2 => prop::collection::vec((blob(), off(), len()), 1..6)
            .prop_map(|writes| Op::WriteBatch { writes }),
        1 => (blob(), any::<u8>()).prop_map(|(blob, what)| Op::OutOfRange { blob, what }),
        1 => Just(Op::SyncReopen),
        1 => Just(Op::ReadOnlyReload),
        4 => Just(Op::Sync),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::CleanReload),
        // Dirty reloads only on the mem backend; elsewhere more clean ones.
        2 => Just(if dirty { Op::DirtyReload } else { Op::CleanReload }),
        5 => blob().prop_map(|blob| Op::Snapshot { blob }),
        // Mostly on targets that can take the operation; sometimes on any blob (refusals).
        4 => (blob(), prop::bool::weighted(0.2)).prop_map(|(blob, any)| Op::Clone { blob, any }),
        2 => (blob(), prop::bool::weighted(0.2)).prop_map(|(blob, any)| Op::Inflate { blob, any }),
        2 => (blob(), prop::bool::weighted(0.2)).prop_map(|(blob, any)| Op::Decouple { blob, any }),
        2 => (blob(), prop::bool::weighted(0.2)).prop_map(|(blob, any)| Op::Absorb { blob, any }),
        1 => blob().prop_map(|blob| Op::DeleteParent { blob }),
    ]
}

fn ops(dirty: bool) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(dirty), 1..60)
}

fn config() -> ProptestConfig {
    let cases = std::env::var("MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn model_mem_512_small_checkpoints(ops in ops(true)) {
        run(&MEM_512, &ops);
    }

    #[test]
    fn model_mem_4k(ops in ops(true)) {
        run(&MEM_4K, &ops);
    }

    #[test]
    fn model_uring_4k(ops in ops(false)) {
        run(&URING_4K, &ops);
    }

    #[test]
    fn model_uring_512_small_checkpoints(ops in ops(false)) {
        run(&URING_512, &ops);
    }
}
