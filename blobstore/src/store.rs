//! The blobstore: format, open, metadata operations, group commit and checkpoints.
//!
//! # Durability rules
//!
//! - A metadata change is applied in memory at once and queued as records; it becomes
//!   durable when a commit containing it completes (`sync`). Commits are atomic groups.
//! - Commit = take the queued records (and, for a checkpoint, a snapshot of the whole table,
//!   in the same critical section) -> Flush (so data the records point at is durable) ->
//!   write the log blocks -> Flush. Concurrent `sync` callers share one commit.
//! - Checked commit: when none of the taken records is *ordered* (every record queued by the
//!   ordinary API is; only `Blob::set_xattr_ns_checked` queues unordered ones, together with
//!   `DataCheck` records covering the data they depend on) and no snapshot is written inline,
//!   the pre-flush is skipped: write the group with `FLAG_CHECKED` -> Flush. Replay verifies
//!   the checks of the log's last group only (the only one whose flush may not have
//!   completed: one leader at a time, each waits for its flush) and drops it if they fail.
//! - A cluster mapping is queued only after the data written to the new cluster (and the
//!   zeroes around it) completed, so the pre-commit Flush covers it.
//! - A cluster freed by a change is reusable only after that change is durable.
//! - Checkpoint = write a snapshot as the first group of a new log (new epoch, new segments)
//!   -> Flush -> write the other superblock copy -> Flush -> free the old log's segments.
//! - Any failed metadata write or flush turns the store read-only.

use crate::alloc::Allocator;
use crate::blob::Blob;
use crate::channel::IoChannel;
use crate::error::{Error, Result};
use crate::format::block::{chain_seed, FLAG_CHECKED};
use crate::format::record::{encode_all, Record, XattrNs};
use crate::format::superblock::{
    Superblock, COMPAT_KNOWN, INCOMPAT_CLONES, INCOMPAT_DATA_CHECKS, MAX_CLUSTER_SIZE,
    MIN_CLUSTER_SIZE, SB_SIZE, SB_VERSION,
};
use crate::journal::{Journal, LogWrite};
use crate::meta::{check_xattr, BlobMeta, Effects, Table, Undo, FLAG_READ_ONLY, FLAG_THIN};
use crate::recovery::{self, ReplayStats, TailInfo};
use crate::units::{BlobId, ClusterIdx, PAGE_SIZE};
use driver::{Device, DmaBuf, Geometry, Lba, Op, QueuePair};
use parking_lot::{Condvar, Mutex};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Options for `format`.
#[derive(Clone, Debug)]
pub struct FormatOptions {
    /// Cluster size in bytes: a power of two from 16 KiB to 1 GiB. Default 1 MiB.
    pub cluster_size: u32,
    /// Deallocate the whole device first (fast on SSDs and sparse files).
    pub discard: bool,
    /// Fixed uuid (random when `None`).
    pub uuid: Option<[u8; 16]>,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            cluster_size: 1 << 20,
            discard: true,
            uuid: None,
        }
    }
}

/// Options for `open`.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Refuse every change; nothing is written to the device.
    pub read_only: bool,
    /// Checkpoint when the log since the last checkpoint exceeds this many bytes.
    /// `None`: a default scaled to the device (1/64 of it, between 4 segments and 64 MiB).
    pub checkpoint_bytes: Option<u64>,
    /// Queue depth of each I/O channel.
    pub queue_depth: u32,
    /// Write checkpoints on a background thread while commits go on (default). When off,
    /// the commit that finds the log too long writes the checkpoint itself: deterministic
    /// I/O order, which the power-cut sweeps rely on.
    pub background_checkpoint: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            checkpoint_bytes: None,
            queue_depth: 128,
            background_checkpoint: true,
        }
    }
}

/// Options for a new blob.
#[derive(Clone, Debug, Default)]
pub struct BlobOptions {
    /// Allocate clusters on first write instead of at resize.
    pub thin: bool,
    /// Initial size in clusters.
    pub clusters: u64,
    /// Initial xattrs.
    pub xattrs: Vec<(XattrNs, Vec<u8>, Vec<u8>)>,
}

/// Store-wide figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreInfo {
    pub uuid: [u8; 16],
    pub generation: u64,
    pub cluster_size: u32,
    pub lba_size: u32,
    pub log_unit: u32,
    pub cluster_count: u64,
    pub used_clusters: u64,
    pub free_clusters: u64,
    /// Clusters kept back from data for metadata growth.
    pub reserved_clusters: u64,
    pub blob_count: u64,
    pub log_segments: u64,
    pub log_bytes: u64,
    pub log_epoch: u64,
    pub checkpoint_count: u64,
    pub read_only: bool,
    pub replay: ReplayStats,
}

/// The mutable metadata state, behind one mutex.
pub(crate) struct State {
    pub table: Table,
    pub alloc: Allocator,
    /// Records applied in memory and not yet handed to a commit.
    pub pending: Vec<Record>,
    /// Some record in `pending` is *ordered*: the data it points at must be flushed before
    /// the group is written. Set by every ordinary change (`apply_locked`); only checked
    /// changes (`Blob::set_xattr_ns_checked`) leave it alone.
    pub pending_ordered: bool,
    /// Clusters freed by `pending`, reusable once it is durable.
    pub pending_frees: Vec<ClusterIdx>,
    /// Cluster mappings in `pending` queued unordered by a channel in checked-mapping mode
    /// (blob, cluster index). The commit taking them stays checked only if its `DataCheck`s
    /// cover every byte of each such cluster; otherwise it is ordered.
    pub pending_checked_maps: Vec<(BlobId, u64)>,
    /// Number of groups applied so far.
    pub op_seq: u64,
    /// Clusters data allocation must leave free for the log and checkpoints.
    pub reserve: u64,
    /// Segments of a background checkpoint's new log, not yet the live log.
    pub bg_segments: Vec<ClusterIdx>,
}

pub(crate) struct Committer {
    qp: Box<dyn QueuePair>,
    pub(crate) journal: Journal,
    pub(crate) sb: Superblock,
    /// Value of `data_writes` covered by the last Flush.
    flushed_writes: u64,
    /// Frees of a commit in flight, released once durable.
    pub(crate) releasing: Vec<ClusterIdx>,
    /// The log is long: the next commit also takes a snapshot for the background thread.
    want_snapshot: bool,
    /// A background checkpoint in progress: groups committed to the old log since its
    /// snapshot, to be copied to the new log before the switch.
    ckpt: Option<CkptProgress>,
    next_token: u64,
}

struct CkptProgress {
    token: u64,
    catch_up: Vec<Vec<u8>>,
}

/// A snapshot handed to the background checkpointer.
struct BgJob {
    token: u64,
    snapshot: Vec<u8>,
    /// Epoch of the log the snapshot was taken from; the switch is void if it changed.
    epoch: u64,
}

#[derive(Default)]
struct BgState {
    job: Option<BgJob>,
    busy: bool,
    shutdown: bool,
}

/// The background checkpointer's mailbox.
#[derive(Default)]
struct Bg {
    m: Mutex<BgState>,
    cv: Condvar,
}

/// Owned by the user-facing `Blobstore` handles: when the last one goes, the background
/// thread is stopped and joined, so no checkpoint I/O outlives the store.
struct Lifecycle {
    bg: Option<Arc<Bg>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        if let Some(bg) = &self.bg {
            bg.m.lock().shutdown = true;
            bg.cv.notify_all();
        }
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

#[derive(Default)]
struct CommitCtl {
    leader: bool,
    durable_seq: u64,
    flushed_writes: u64,
}

pub(crate) struct Inner {
    pub dev: Arc<dyn Device>,
    pub geom: Geometry,
    pub cluster_size: u64,
    pub lba_size: u64,
    pub uuid: [u8; 16],
    pub opts: OpenOptions,
    pub checkpoint_bytes: u64,
    pub state: Mutex<State>,
    pub(crate) committer: Mutex<Committer>,
    ctl: Mutex<CommitCtl>,
    cv: Condvar,
    /// Why the store accepts no changes, if it does not.
    read_only: Mutex<Option<String>>,
    read_only_flag: AtomicBool,
    /// Data writes completed (bumped by channels), to know whether a Flush is needed.
    pub data_writes: AtomicU64,
    /// Log groups (deltas and checkpoint snapshots) durably written since open.
    groups: AtomicU64,
    /// The superblock has `INCOMPAT_DATA_CHECKS`: checked groups may be written.
    data_checks: bool,
    /// The superblock has `INCOMPAT_CLONES`: snapshots and clones may be made.
    clones: bool,
    replay_stats: ReplayStats,
    tail: TailInfo,
    bg: Option<Arc<Bg>>,
}

/// A blobstore on a device. Cheap to clone (shared handle); `Send + Sync`.
#[derive(Clone)]
pub struct Blobstore {
    pub(crate) inner: Arc<Inner>,
    /// Held for its `Drop`: the last handle stops the background checkpointer.
    _life: Arc<Lifecycle>,
}

impl fmt::Debug for Blobstore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blobstore")
            .field("device", &self.inner.dev.describe())
            .finish()
    }
}

fn random_u64() -> u64 {
    rand::random()
}

fn sb_write(qp: &mut dyn QueuePair, dev: &dyn Device, sb: &Superblock) -> Result<()> {
    let slot = sb.generation % 2;
    let lba = u64::from(dev.geometry().lba_size);
    let bytes = sb.encode();
    run_write(qp, dev, slot * SB_SIZE as u64 / lba, &bytes)
}

fn run_write(qp: &mut dyn QueuePair, dev: &dyn Device, lba: u64, data: &[u8]) -> Result<()> {
    let mut buf = dev.alloc_buf(data.len());
    buf.as_mut_slice().copy_from_slice(data);
    driver::run_one(qp, Op::Write { lba: Lba(lba), buf })?;
    Ok(())
}

fn flush(qp: &mut dyn QueuePair) -> Result<()> {
    driver::run_one(qp, Op::Flush)?;
    Ok(())
}

/// Issues several writes at once and waits for all; the first error wins.
fn write_all(qp: &mut dyn QueuePair, ops: Vec<(u64, DmaBuf)>) -> Result<()> {
    let mut first_err: Option<driver::Error> = None;
    let mut out = Vec::new();
    let mut queue = ops.into_iter();
    let mut next = queue.next();
    loop {
        while let Some((lba, buf)) = next.take() {
            match qp.submit(Op::Write { lba: Lba(lba), buf }, 0) {
                Ok(()) => next = queue.next(),
                Err(e) if matches!(e.error, driver::Error::QueueFull) => {
                    let Op::Write { lba, buf } = e.op else {
                        return Err(Error::Io(e.error));
                    };
                    next = Some((lba.0, buf));
                    break;
                }
                Err(e) => {
                    first_err.get_or_insert(e.error);
                    next = queue.next();
                }
            }
        }
        if qp.in_flight() == 0 && next.is_none() {
            break;
        }
        qp.wait(64, &mut out);
        for c in out.drain(..) {
            if let Err(e) = c.result {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(Error::Io(e)),
        None => Ok(()),
    }
}

fn log_writes_to_ops(
    writes: Vec<LogWrite>,
    dev: &dyn Device,
    cluster_size: u64,
) -> Vec<(u64, DmaBuf)> {
    let lba = u64::from(dev.geometry().lba_size);
    let max = dev.geometry().max_transfer as usize;
    let mut ops = Vec::new();
    for w in writes {
        let base = w.seg.0 * cluster_size + w.off;
        for (i, chunk) in w.data.chunks(max).enumerate() {
            let mut buf = dev.alloc_buf(chunk.len());
            buf.as_mut_slice().copy_from_slice(chunk);
            ops.push(((base + (i * max) as u64) / lba, buf));
        }
    }
    ops
}

impl Blobstore {
    /// Creates an empty store on `dev`, destroying what was there.
    pub fn format(dev: Arc<dyn Device>, opts: &FormatOptions) -> Result<()> {
        let geom = dev.geometry();
        let cs = opts.cluster_size;
        if !cs.is_power_of_two() || !(MIN_CLUSTER_SIZE..=MAX_CLUSTER_SIZE).contains(&cs) {
            return Err(Error::Invalid(format!(
                "cluster size {cs}: must be a power of two from {MIN_CLUSTER_SIZE} to {MAX_CLUSTER_SIZE}"
            )));
        }
        if geom.lba_size > PAGE_SIZE || u64::from(cs) % u64::from(geom.lba_size) != 0 {
            return Err(Error::Invalid(format!(
                "device LBA size {} is not supported (at most {PAGE_SIZE})",
                geom.lba_size
            )));
        }
        let cluster_count = geom.capacity() / u64::from(cs);
        if cluster_count < 8 {
            return Err(Error::Invalid(format!(
                "device of {} bytes holds {cluster_count} clusters of {cs}; need at least 8",
                geom.capacity()
            )));
        }
        let mut qp = dev.open_qpair(8)?;
        let qp = qp.as_mut();
        let lba = u64::from(geom.lba_size);
        if opts.discard {
            driver::run_one(
                qp,
                Op::Deallocate {
                    lba: Lba(0),
                    count: cluster_count * u64::from(cs) / lba,
                },
            )?;
        }
        // Invalidate both superblock copies first, so a half-made store never looks valid.
        run_write(qp, dev.as_ref(), 0, &vec![0u8; 2 * SB_SIZE])?;
        let epoch = random_u64();
        let seg = ClusterIdx(1);
        let mut j = Journal::new(epoch, 1, chain_seed(epoch), seg, lba, u64::from(cs));
        let table = Table::new(cluster_count, u64::from(cs));
        let payload = encode_all(&table.snapshot_records());
        let writes = j.build_group(&payload, &mut || {
            Err(Error::Invalid(
                "empty snapshot does not fit a segment".into(),
            ))
        })?;
        write_all(qp, log_writes_to_ops(writes, dev.as_ref(), u64::from(cs)))?;
        flush(qp)?;
        let sb = Superblock {
            version: SB_VERSION,
            compat: COMPAT_KNOWN,
            ro_compat: 0,
            incompat: INCOMPAT_DATA_CHECKS | INCOMPAT_CLONES,
            uuid: opts.uuid.unwrap_or_else(|| {
                let mut u = [0u8; 16];
                u[..8].copy_from_slice(&random_u64().to_le_bytes());
                u[8..].copy_from_slice(&random_u64().to_le_bytes());
                u
            }),
            generation: 1,
            log_unit: geom.lba_size,
            page_size: PAGE_SIZE,
            cluster_size: cs,
            cluster_count,
            log_start: seg.0,
            log_epoch: epoch,
            log_start_seq: 1,
            checkpoint_count: 0,
        };
        sb_write(qp, dev.as_ref(), &sb)?;
        flush(qp)?;
        Ok(())
    }

    /// Formats then opens.
    pub fn create(
        dev: Arc<dyn Device>,
        fopts: &FormatOptions,
        oopts: OpenOptions,
    ) -> Result<Blobstore> {
        Blobstore::format(Arc::clone(&dev), fopts)?;
        Blobstore::open(dev, oopts)
    }

    /// Loads the store on `dev`: reads the superblocks, replays the log since the last
    /// checkpoint. Nothing is written, except after a crash that left a checked last group
    /// whose data checks failed: replay discards it, and a read-write open at once writes an
    /// empty group over it (and flushes), so that data written later cannot make it verify
    /// and come back at a later load.
    pub fn open(dev: Arc<dyn Device>, opts: OpenOptions) -> Result<Blobstore> {
        let mut qp = dev.open_qpair(16)?;
        let pair = recovery::read_superblocks(qp.as_mut(), dev.as_ref())?;
        let sb = pair.active;
        if sb.read_only_features() != 0 && !opts.read_only {
            return Err(Error::Unsupported(format!(
                "read-only-compatible feature bits {:#x}: open read-only",
                sb.read_only_features()
            )));
        }
        let r = recovery::replay(qp.as_mut(), dev.as_ref(), &sb, false)?;
        let seal = r.stats.discarded_checked_groups > 0 && !opts.read_only;
        let store = Blobstore::from_replayed(dev, opts, qp, r)?;
        if seal {
            store.confirm()?;
        }
        Ok(store)
    }

    /// Builds a store from a replay (the state of the log `r.sb` points at). `open` uses it
    /// after a strict replay; fsck after a lenient one it repaired.
    pub fn from_replayed(
        dev: Arc<dyn Device>,
        opts: OpenOptions,
        qp: Box<dyn QueuePair>,
        r: recovery::Replayed,
    ) -> Result<Blobstore> {
        let sb = r.sb.clone();
        let data_checks = sb.incompat & INCOMPAT_DATA_CHECKS != 0;
        let clones = sb.incompat & INCOMPAT_CLONES != 0;
        let geom = dev.geometry();
        let cluster_size = u64::from(sb.cluster_size);
        let checkpoint_bytes = opts.checkpoint_bytes.unwrap_or_else(|| {
            (geom.capacity() / 64).clamp(4 * cluster_size, (64u64 << 20).max(4 * cluster_size))
        });
        let mut state = State {
            table: r.table,
            alloc: r.alloc,
            pending: Vec::new(),
            pending_ordered: false,
            pending_checked_maps: Vec::new(),
            pending_frees: Vec::new(),
            op_seq: 0,
            reserve: 0,
            bg_segments: Vec::new(),
        };
        state.reserve = reserve_for(checkpoint_bytes, cluster_size, r.journal.snapshot_bytes);
        let inner = Inner {
            geom,
            cluster_size,
            lba_size: u64::from(geom.lba_size),
            uuid: sb.uuid,
            checkpoint_bytes,
            state: Mutex::new(state),
            committer: Mutex::new(Committer {
                qp,
                journal: r.journal,
                sb,
                flushed_writes: 0,
                releasing: Vec::new(),
                want_snapshot: false,
                ckpt: None,
                next_token: 1,
            }),
            ctl: Mutex::new(CommitCtl::default()),
            cv: Condvar::new(),
            read_only: Mutex::new(opts.read_only.then(|| "opened read-only".to_string())),
            read_only_flag: AtomicBool::new(opts.read_only),
            data_writes: AtomicU64::new(0),
            groups: AtomicU64::new(0),
            data_checks,
            clones,
            replay_stats: r.stats,
            tail: r.tail,
            bg: (!opts.read_only && opts.background_checkpoint).then(Arc::default),
            opts,
            dev,
        };
        let inner = Arc::new(inner);
        let thread = match &inner.bg {
            Some(bg) => {
                let weak = Arc::downgrade(&inner);
                let bg = Arc::clone(bg);
                Some(
                    std::thread::Builder::new()
                        .name("blobstore-ckpt".into())
                        .spawn(move || bg_main(weak, bg))
                        .map_err(|e| Error::Io(driver::Error::Io(e)))?,
                )
            }
            None => None,
        };
        Ok(Blobstore {
            _life: Arc::new(Lifecycle {
                bg: inner.bg.clone(),
                thread: Mutex::new(thread),
            }),
            inner,
        })
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn Device> {
        &self.inner.dev
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.inner.cluster_size
    }

    /// The I/O unit in bytes (the device's LBA size): blob I/O offsets and lengths are
    /// multiples of it.
    pub fn io_unit(&self) -> u64 {
        self.inner.lba_size
    }

    /// Where the replay at open stopped, and why.
    pub fn tail(&self) -> &TailInfo {
        &self.inner.tail
    }

    /// Store-wide figures.
    pub fn info(&self) -> StoreInfo {
        let c = self.inner.committer.lock();
        let st = self.inner.state.lock();
        StoreInfo {
            uuid: self.inner.uuid,
            generation: c.sb.generation,
            cluster_size: c.sb.cluster_size,
            lba_size: self.inner.geom.lba_size,
            log_unit: c.sb.log_unit,
            cluster_count: st.alloc.count(),
            used_clusters: st.alloc.used(),
            free_clusters: st.alloc.free(),
            reserved_clusters: st.reserve,
            blob_count: st.table.blobs.len() as u64,
            log_segments: c.journal.segments.len() as u64,
            log_bytes: c.journal.bytes,
            log_epoch: c.journal.epoch,
            checkpoint_count: c.sb.checkpoint_count,
            read_only: self.is_read_only(),
            replay: self.inner.replay_stats,
        }
    }

    /// Space figures without waiting for a commit in progress (unlike `info`): total
    /// clusters, free clusters, clusters kept for metadata, number of blobs.
    pub fn usage(&self) -> Usage {
        let st = self.inner.state.lock();
        Usage {
            cluster_size: self.inner.cluster_size,
            clusters: st.alloc.count(),
            free: st.alloc.free(),
            reserved: st.reserve,
            blobs: st.table.blobs.len() as u64,
        }
    }

    /// Whether changes are refused.
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only_flag.load(Ordering::SeqCst)
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// A new I/O channel (one queue pair) for the calling thread.
    pub fn channel(&self) -> Result<IoChannel> {
        IoChannel::new(Arc::clone(&self.inner))
    }

    /// Ids of all blobs, ascending.
    pub fn blob_ids(&self) -> Vec<BlobId> {
        self.inner
            .state
            .lock()
            .table
            .blobs
            .keys()
            .copied()
            .collect()
    }

    /// A copy of one blob's metadata.
    pub fn blob_meta(&self, id: BlobId) -> Result<BlobMeta> {
        let st = self.inner.state.lock();
        let e = st.table.get(id)?;
        let m = e.meta.read().clone();
        Ok(m)
    }

    /// A copy of all metadata (for checks and tests).
    pub fn export(&self) -> BTreeMap<BlobId, BlobMeta> {
        self.inner.state.lock().table.export()
    }

    /// Creates a blob; durable after the next `sync`.
    pub fn create_blob(&self, opts: BlobOptions) -> Result<BlobId> {
        self.inner.check_writable()?;
        let mut clusters = Vec::new();
        if !opts.thin && opts.clusters > 0 {
            clusters = self.inner.alloc_zeroed(opts.clusters)?;
        }
        let mut st = self.inner.state.lock();
        let id = BlobId(st.table.next_blob_id);
        let mut recs = vec![Record::CreateBlob {
            id,
            flags: if opts.thin { FLAG_THIN } else { 0 },
        }];
        if opts.clusters > 0 {
            recs.push(Record::Resize {
                id,
                clusters: opts.clusters,
            });
        }
        recs.extend(map_records(id, 0, &clusters));
        for (ns, name, value) in opts.xattrs {
            recs.push(Record::SetXattr {
                id,
                ns,
                name,
                value,
            });
        }
        match self.inner.apply_locked(&mut st, recs) {
            Ok(()) => Ok(id),
            Err(e) => {
                for c in clusters {
                    st.alloc.release(c);
                }
                Err(e)
            }
        }
    }

    /// Opens a blob for I/O and metadata changes. The handle closes on drop.
    pub fn open_blob(&self, id: BlobId) -> Result<Blob> {
        let st = self.inner.state.lock();
        let e = Arc::clone(st.table.get(id)?);
        e.open_count.fetch_add(1, Ordering::SeqCst);
        Ok(Blob::new(Arc::clone(&self.inner), e))
    }

    /// Deletes a closed blob; its clusters are reusable once the delete is durable.
    pub fn delete_blob(&self, id: BlobId) -> Result<()> {
        self.inner.check_writable()?;
        let mut st = self.inner.state.lock();
        self.inner
            .apply_locked(&mut st, vec![Record::DeleteBlob { id }])
    }

    /// Starts a multi-blob transaction: its changes are applied all or none, and commit in
    /// the same log group.
    pub fn transaction(&self) -> Transaction<'_> {
        Transaction {
            store: self,
            records: Vec::new(),
        }
    }

    /// Makes every completed data write and every metadata change made so far durable.
    /// Concurrent callers share commits (group commit).
    pub fn sync(&self) -> Result<()> {
        self.inner.sync()
    }

    /// `sync` for a caller whose checked records (`Blob::set_xattr_ns_checked`) vouch for
    /// data writes still in flight: the log write overlaps the data writes instead of
    /// following them (one write latency less per fsync of an append).
    ///
    /// `queue` applies the caller's records; `wait` waits until the data writes submitted
    /// before the call have completed, returning their first error. `wait` is always called
    /// exactly once. If nobody else is committing, this thread becomes the commit leader,
    /// calls `queue` (so no other leader can take those records before the data is
    /// complete), writes the group, calls `wait` and only then issues the Flush, which makes
    /// the data and the group durable together; replay drops the group if the data did not
    /// land. If the group turns out to need the ordered path (another thread queued a cluster
    /// mapping, or a checkpoint is due), `wait` runs before the pre-commit Flush instead. A
    /// failing `wait` at that point turns the store read-only: the group may already be on
    /// the device and cannot be taken back. If another leader is committing, this is
    /// simply `wait`, `queue`, `sync` (the records join the next shared group).
    pub fn sync_overlapped(
        &self,
        queue: impl FnOnce() -> Result<()>,
        wait: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        self.inner.sync_overlapped(queue, wait)
    }

    /// Writes a checkpoint now (a snapshot in a fresh log), so the next load replays nothing
    /// but that snapshot.
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.check_writable()?;
        self.inner.commit_now(true, false)
    }

    /// Whether checked commits are available (the store has the `data_checks` incompat
    /// feature, which `format` sets). Without it, [`Blob::set_xattr_ns_checked`] works but
    /// commits like the ordinary API (data flushed before the group).
    pub fn supports_data_checks(&self) -> bool {
        self.inner.data_checks
    }

    /// Number of log groups durably written since the store was opened (commits that wrote
    /// a group, including checkpoint snapshots). It only grows, and a group counted here is
    /// followed in the log by every group counted later.
    ///
    /// Use: read it right after the `sync` that made a checked change durable, say `g`. Once
    /// `groups_committed() > g`, a later group is durable, so that checked group is no longer
    /// the last of the log and replay will never verify its data again.
    pub fn groups_committed(&self) -> u64 {
        self.inner.groups.load(Ordering::SeqCst)
    }

    /// Writes and flushes an empty log group (a marker) and returns once a group written
    /// after the call started is durable (another thread's commit can serve). It does not
    /// commit what is queued: records not yet synced stay queued for the next commit (call
    /// `sync` first to have them in a group before the marker).
    ///
    /// Call it before changing bytes covered by a `DataCheck` of a group that may still be
    /// the last one of the log (see [`Blobstore::groups_committed`]): replay verifies the
    /// last group's checks, and would discard that acknowledged group if the bytes changed.
    pub fn confirm(&self) -> Result<()> {
        self.inner.confirm()
    }

    /// Syncs and checkpoints (so the next load is quick), then drops the handle. Other
    /// clones of the handle stay usable.
    pub fn close(self) -> Result<()> {
        if self.is_read_only() {
            return Ok(());
        }
        let needs_checkpoint = {
            let c = self.inner.committer.lock();
            c.journal.bytes > c.journal.snapshot_bytes
        };
        if needs_checkpoint || !self.inner.state.lock().pending.is_empty() {
            self.inner.commit_now(true, false)?;
        } else {
            self.sync()?;
        }
        Ok(())
    }

    /// Commits `records` to the log exactly as given, without applying them in memory or
    /// checking them: a way for tests and fsck's damage corpus to make images with
    /// impossible metadata (a cluster owned twice, unknown flags...). The handle should be
    /// dropped afterwards: its memory no longer matches the device.
    #[doc(hidden)]
    pub fn debug_inject_records(&self, records: Vec<crate::format::record::Record>) -> Result<()> {
        {
            let mut st = self.inner.state.lock();
            st.pending.extend(records);
            st.pending_ordered = true;
            st.op_seq += 1;
        }
        self.inner.sync()
    }

    /// Waits until the background checkpointer has nothing queued or running.
    pub fn wait_background(&self) {
        if let Some(bg) = &self.inner.bg {
            let mut st = bg.m.lock();
            while (st.job.is_some() || st.busy) && !st.shutdown {
                bg.cv.wait(&mut st);
            }
        }
    }

    /// Runs the consistency check (see [`crate::check`]).
    pub fn check(&self) -> Result<crate::check::CheckReport> {
        crate::check::check(self)
    }

    /// Clusters the metadata log occupies, and the active superblock: for tools and tests
    /// that look at (or damage) the metadata regions.
    pub fn metadata_layout(&self) -> MetadataLayout {
        let c = self.inner.committer.lock();
        MetadataLayout {
            cluster_size: self.inner.cluster_size,
            log_segments: c.journal.segments.clone(),
            snapshot_segment: c.journal.segments[0],
            tail: (c.journal.seg, c.journal.off),
            generation: c.sb.generation,
        }
    }
}

/// Space figures (see [`Blobstore::usage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub cluster_size: u64,
    pub clusters: u64,
    pub free: u64,
    pub reserved: u64,
    pub blobs: u64,
}

/// Where the metadata lives on the device.
#[derive(Clone, Debug)]
pub struct MetadataLayout {
    pub cluster_size: u64,
    pub log_segments: Vec<ClusterIdx>,
    /// The segment holding the checkpoint (snapshot) the log starts with.
    pub snapshot_segment: ClusterIdx,
    /// Where the next log block goes.
    pub tail: (ClusterIdx, u64),
    pub generation: u64,
}

/// Clusters kept from data so the log and a checkpoint can always be written: the log can
/// grow to twice `checkpoint_bytes` before a checkpoint is forced, and a checkpoint needs
/// room for a new snapshot while the old log still exists.
fn reserve_for(checkpoint_bytes: u64, cluster_size: u64, snapshot_bytes: u64) -> u64 {
    (2 * checkpoint_bytes).div_ceil(cluster_size)
        + 2 * snapshot_bytes.div_ceil(cluster_size / 2)
        + 2
}

/// MapRun records for clusters placed at consecutive indices from `start`.
pub(crate) fn map_records(id: BlobId, start: u64, clusters: &[ClusterIdx]) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    for (i, &c) in clusters.iter().enumerate() {
        if let Some(Record::MapRun { first, count, .. }) = out.last_mut() {
            if first.is_some() == c.is_some() && (c.is_none() || first.0 + *count == c.0) {
                *count += 1;
                continue;
            }
        }
        out.push(Record::MapRun {
            id,
            index: start + i as u64,
            first: c,
            count: 1,
        });
    }
    out
}

impl ClusterIdx {
    fn is_none(self) -> bool {
        !self.is_some()
    }
}

impl Inner {
    /// Whether checked groups may be written (the `data_checks` feature).
    pub(crate) fn data_checks(&self) -> bool {
        self.data_checks
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.read_only_flag.load(Ordering::SeqCst) {
            let why = self
                .read_only
                .lock()
                .clone()
                .unwrap_or_else(|| "read-only".into());
            return Err(Error::ReadOnly(why));
        }
        Ok(())
    }

    fn turn_read_only(&self, why: String) {
        let mut r = self.read_only.lock();
        if r.is_none() {
            *r = Some(format!("metadata write failed, store is read-only: {why}"));
        }
        self.read_only_flag.store(true, Ordering::SeqCst);
    }

    /// Applies records as one atomic group: all or none. They are *ordered*: the commit that
    /// writes them first flushes the data writes completed before it.
    pub(crate) fn apply_locked(&self, st: &mut State, recs: Vec<Record>) -> Result<()> {
        self.apply_locked_with(st, recs, true)
    }

    /// `apply_locked`, choosing whether the records are ordered. Unordered records must
    /// depend on no data except what `DataCheck` records among them cover.
    pub(crate) fn apply_locked_with(
        &self,
        st: &mut State,
        recs: Vec<Record>,
        ordered: bool,
    ) -> Result<()> {
        self.check_writable()?;
        let mut undos: Vec<Undo> = Vec::with_capacity(recs.len());
        let mut fx = Effects::default();
        for r in &recs {
            match st.table.apply(r, &mut fx) {
                Ok(u) => undos.push(u),
                Err(e) => {
                    for u in undos.into_iter().rev() {
                        st.table.undo(u);
                    }
                    return Err(e);
                }
            }
        }
        debug_assert!(fx.mapped.iter().all(|c| st.alloc.is_used(*c)));
        // Unordered records may neither map nor free clusters: a mapping exposes data that
        // only the ordered path makes durable first (`apply_checked_map` is the exception).
        let ordered = ordered || !fx.mapped.is_empty() || !fx.freed.is_empty();
        st.pending.extend(recs);
        st.pending_ordered |= ordered;
        st.pending_frees.extend(fx.freed);
        st.op_seq += 1;
        Ok(())
    }

    /// Queues a cluster mapping (`MapRun` of one cluster) *unordered*, to be vouched for by
    /// `DataCheck`s covering the whole cluster in the same commit; a commit that takes it
    /// without such checks is ordered (see `State::pending_checked_maps`). The data written
    /// into the cluster (and the zeroes around it) must have completed before.
    pub(crate) fn apply_checked_map(&self, st: &mut State, rec: Record) -> Result<()> {
        let Record::MapRun {
            id, index, count, ..
        } = rec
        else {
            return self.apply_locked(st, vec![rec]);
        };
        self.check_writable()?;
        let mut fx = Effects::default();
        let undo = st.table.apply(&rec, &mut fx)?;
        if !fx.freed.is_empty() {
            st.table.undo(undo);
            return Err(Error::Invalid(
                "a checked mapping may not free clusters".into(),
            ));
        }
        st.pending.push(rec);
        st.pending_checked_maps
            .extend((index..index + count).map(|i| (id, i)));
        st.op_seq += 1;
        Ok(())
    }

    /// Whether the store has the `clones` feature.
    pub(crate) fn clones(&self) -> bool {
        self.clones
    }

    /// Allocates a data cluster, leaving the metadata reserve free.
    pub(crate) fn alloc_data(&self, st: &mut State) -> Result<ClusterIdx> {
        if st.alloc.free() <= st.reserve {
            return Err(Error::NoSpace(format!(
                "{} clusters free, {} kept for metadata",
                st.alloc.free(),
                st.reserve
            )));
        }
        st.alloc
            .alloc()
            .ok_or_else(|| Error::NoSpace("no free cluster".into()))
    }

    /// Allocates `n` clusters and zeroes them on the device (thick allocation).
    pub(crate) fn alloc_zeroed(&self, n: u64) -> Result<Vec<ClusterIdx>> {
        let mut got = Vec::with_capacity(n as usize);
        {
            let mut st = self.state.lock();
            if st.alloc.free() < st.reserve + n {
                return Err(Error::NoSpace(format!(
                    "{n} clusters wanted, {} free, {} kept for metadata",
                    st.alloc.free(),
                    st.reserve
                )));
            }
            for _ in 0..n {
                match self.alloc_data(&mut st) {
                    Ok(c) => got.push(c),
                    Err(e) => {
                        for c in got {
                            st.alloc.release(c);
                        }
                        return Err(e);
                    }
                }
            }
        }
        if let Err(e) = self.zero_clusters(&got) {
            let mut st = self.state.lock();
            for c in got {
                st.alloc.release(c);
            }
            return Err(e);
        }
        Ok(got)
    }

    fn zero_clusters(&self, clusters: &[ClusterIdx]) -> Result<()> {
        if clusters.is_empty() {
            return Ok(());
        }
        let mut qp = self.dev.open_qpair(32)?;
        let per = self.cluster_size / self.lba_size;
        let mut out = Vec::new();
        let mut err = None;
        for c in clusters {
            loop {
                match qp.submit(
                    Op::WriteZeroes {
                        lba: Lba(c.0 * per),
                        count: per,
                    },
                    0,
                ) {
                    Ok(()) => break,
                    Err(e) if matches!(e.error, driver::Error::QueueFull) => {
                        qp.wait(32, &mut out);
                    }
                    Err(e) => return Err(Error::Io(e.error)),
                }
            }
        }
        while qp.in_flight() > 0 {
            qp.wait(32, &mut out);
        }
        for c in out {
            if let Err(e) = c.result {
                err.get_or_insert(e);
            }
        }
        self.data_writes.fetch_add(1, Ordering::SeqCst);
        match err {
            Some(e) => Err(Error::Io(e)),
            None => Ok(()),
        }
    }

    /// Group commit: returns once everything applied before the call is durable.
    pub(crate) fn sync(&self) -> Result<()> {
        self.check_writable()?;
        let target = self.state.lock().op_seq;
        let writes = self.data_writes.load(Ordering::SeqCst);
        loop {
            let mut ctl = self.ctl.lock();
            if ctl.durable_seq >= target && ctl.flushed_writes >= writes {
                return Ok(());
            }
            self.check_writable()?;
            if ctl.leader {
                self.cv.wait(&mut ctl);
                continue;
            }
            drop(ctl);
            // Someone may have become leader meanwhile: then we wait for them next round.
            if let Some(res) = self.try_lead(false, false) {
                res?;
            }
        }
    }

    /// See `Blobstore::sync_overlapped`.
    pub(crate) fn sync_overlapped(
        &self,
        queue: impl FnOnce() -> Result<()>,
        wait: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let lead = self.check_writable().is_ok() && {
            let mut ctl = self.ctl.lock();
            !ctl.leader && {
                ctl.leader = true;
                true
            }
        };
        if !lead {
            // Someone is committing (or the store cannot commit): no overlap to be had.
            wait()?;
            queue()?;
            return self.sync();
        }
        // Leader: no other thread takes the queued records until this commit does.
        let res = match queue() {
            Ok(()) => {
                let mut wait = Some(wait);
                let mut hook = || wait.take().map_or(Ok(()), |w| w());
                let r = self.lead_commit_with(false, false, Some(&mut hook));
                // A commit that wrote nothing never called the hook.
                let w = hook();
                r.and_then(|x| w.map(|()| x))
            }
            Err(e) => {
                let _ = wait();
                Err(e)
            }
        };
        self.end_lead(&res);
        res.map(|_| ())
    }

    /// Returns once a group written after the call started is durable (see
    /// `Blobstore::confirm`). A leader already running when we start also writes after every
    /// group acknowledged before the call (leaders run one at a time, each waits for its own
    /// flush), so its group serves.
    pub(crate) fn confirm(&self) -> Result<()> {
        self.check_writable()?;
        let start = self.groups.load(Ordering::SeqCst);
        loop {
            if self.groups.load(Ordering::SeqCst) > start {
                return Ok(());
            }
            self.check_writable()?;
            if let Some(res) = self.try_lead(false, true) {
                res?;
                continue;
            }
            let mut ctl = self.ctl.lock();
            if ctl.leader {
                self.cv.wait(&mut ctl);
            }
        }
    }

    /// Runs one commit now (as leader), optionally forcing a checkpoint and/or a group.
    fn commit_now(&self, checkpoint: bool, force_group: bool) -> Result<()> {
        loop {
            if let Some(res) = self.try_lead(checkpoint, force_group) {
                return res;
            }
            let mut ctl = self.ctl.lock();
            if ctl.leader {
                self.cv.wait(&mut ctl);
            }
        }
    }

    /// Becomes the commit leader if nobody is, runs one commit and publishes what became
    /// durable; `None` if another thread leads.
    fn try_lead(&self, checkpoint: bool, force_group: bool) -> Option<Result<()>> {
        {
            let mut ctl = self.ctl.lock();
            if ctl.leader {
                return None;
            }
            ctl.leader = true;
        }
        let res = self.lead_commit(checkpoint, force_group);
        self.end_lead(&res);
        Some(res.map(|_| ()))
    }

    /// Gives up leadership, publishing what the commit made durable, and wakes waiters.
    fn end_lead(&self, res: &Result<(u64, u64)>) {
        let mut ctl = self.ctl.lock();
        ctl.leader = false;
        if let Ok((seq, w)) = res {
            ctl.durable_seq = ctl.durable_seq.max(*seq);
            ctl.flushed_writes = ctl.flushed_writes.max(*w);
        }
        self.cv.notify_all();
    }

    /// The leader's work. Returns the op sequence and data-write count now durable.
    /// Whether the background checkpointer is running.
    fn background(&self) -> bool {
        self.bg.as_ref().is_some_and(|b| !b.m.lock().shutdown)
    }

    fn lead_commit(&self, force_checkpoint: bool, force_group: bool) -> Result<(u64, u64)> {
        self.lead_commit_with(force_checkpoint, force_group, None)
    }

    /// `lead_commit` with a hook that waits for data writes still in flight which the taken
    /// records depend on (`sync_overlapped`): called before the Flush that must cover them.
    fn lead_commit_with(
        &self,
        force_checkpoint: bool,
        force_group: bool,
        hook: Option<&mut dyn FnMut() -> Result<()>>,
    ) -> Result<(u64, u64)> {
        let mut guard = self.committer.lock();
        // A leader that failed turned the store read-only while holding the committer, and
        // took the pending records with it: a commit now would find nothing to write and
        // report everything applied so far as durable. (The caller's own check ran before
        // it became leader, so it can miss a failure in between.)
        self.check_writable()?;
        let c = &mut *guard;
        let background = self.background();
        let long = c.journal.bytes >= self.checkpoint_bytes;
        // Back-pressure: if the background checkpointer falls behind and the log reaches
        // twice the threshold, checkpoint here (voiding its job) so the log stays within
        // the space reserved for it.
        let too_long = c.journal.bytes >= 2 * self.checkpoint_bytes;
        // A forced group (`confirm`) is a marker: an empty group and nothing else. It takes
        // neither the queued records nor a snapshot (which would hold them too), so what a
        // caller has not synced is not committed behind its back.
        let inline = !force_group && (force_checkpoint || (!background && long) || too_long);
        let bg_snapshot =
            !force_group && !inline && background && c.want_snapshot && c.ckpt.is_none();
        // Take the queued records (and the snapshot) in one critical section, so that the
        // snapshot is exactly the state after them.
        let (records, ordered, frees, seq, snapshot) = if force_group {
            (Vec::new(), false, Vec::new(), 0, None)
        } else {
            let mut st = self.state.lock();
            let records = std::mem::take(&mut st.pending);
            let mut ordered = std::mem::take(&mut st.pending_ordered);
            let maps = std::mem::take(&mut st.pending_checked_maps);
            if !ordered && !maps.is_empty() {
                ordered = !checks_cover_clusters(&records, &maps, self.cluster_size);
            }
            let frees = std::mem::take(&mut st.pending_frees);
            let snapshot =
                (inline || bg_snapshot).then(|| encode_all(&st.table.snapshot_records()));
            (records, ordered, frees, st.op_seq, snapshot)
        };
        let writes = self.data_writes.load(Ordering::SeqCst);
        c.releasing = frees;
        let (inline_snapshot, bg_job) = if inline {
            (snapshot, None)
        } else {
            (None, snapshot)
        };
        let res = self.commit_body(
            c,
            Taken {
                records,
                ordered,
                snapshot: inline_snapshot,
                writes,
                force_group,
            },
            hook,
        );
        match res {
            Ok(wrote_group) => {
                c.flushed_writes = writes;
                if wrote_group {
                    self.groups.fetch_add(1, Ordering::SeqCst);
                }
                let frees = std::mem::take(&mut c.releasing);
                {
                    let mut st = self.state.lock();
                    for f in frees {
                        st.alloc.release(f);
                    }
                }
                if inline {
                    // The log was replaced: a background checkpoint of the old one is void.
                    c.ckpt = None;
                    c.want_snapshot = false;
                }
                if let (Some(snapshot), Some(bg)) = (bg_job, self.bg.as_ref()) {
                    let token = c.next_token;
                    c.next_token += 1;
                    c.want_snapshot = false;
                    c.ckpt = Some(CkptProgress {
                        token,
                        catch_up: Vec::new(),
                    });
                    bg.m.lock().job = Some(BgJob {
                        token,
                        snapshot,
                        epoch: c.journal.epoch,
                    });
                    bg.cv.notify_all();
                }
                if background && c.ckpt.is_none() && c.journal.bytes >= self.checkpoint_bytes {
                    c.want_snapshot = true;
                }
                // Hand the lock over fairly: the background checkpointer waits for it to
                // switch logs, and a busy committer must not starve it.
                parking_lot::MutexGuard::unlock_fair(guard);
                Ok((seq, writes))
            }
            Err(e) => {
                self.turn_read_only(e.to_string());
                Err(e)
            }
        }
    }

    /// The background part of a checkpoint: write the snapshot into a new log without
    /// holding the committer (commits go on into the old log), then, holding it, copy the
    /// groups committed meanwhile, write the superblock and switch.
    fn run_bg_checkpoint(&self, job: BgJob, bg: &Bg, qp: &mut Option<Box<dyn QueuePair>>) {
        let dev = self.dev.as_ref();
        let (unit, seg_size) = {
            let c = self.committer.lock();
            (c.journal.unit, c.journal.seg_size)
        };
        let new_segment = || -> Result<ClusterIdx> {
            let mut st = self.state.lock();
            let s = st
                .alloc
                .alloc()
                .ok_or_else(|| Error::NoSpace("no cluster left for the metadata log".into()))?;
            st.bg_segments.push(s);
            Ok(s)
        };
        let free_segments = |segs: &[ClusterIdx]| {
            let mut st = self.state.lock();
            for s in segs {
                st.alloc.release(*s);
            }
            st.bg_segments.clear();
        };
        let cancel = |segs: &[ClusterIdx]| {
            free_segments(segs);
            let mut c = self.committer.lock();
            if c.ckpt.as_ref().is_some_and(|k| k.token == job.token) {
                c.ckpt = None;
            }
        };
        let Ok(seg) = new_segment() else {
            cancel(&[]);
            return;
        };
        let epoch = random_u64();
        let mut j = Journal::new(epoch, 1, chain_seed(epoch), seg, unit, seg_size);
        let mut alloc_seg = new_segment;
        let writes = match j.build_group(&job.snapshot, &mut alloc_seg) {
            Ok(w) => w,
            Err(_) => {
                cancel(&j.segments);
                return;
            }
        };
        j.snapshot_bytes = j.bytes;
        if bg.m.lock().shutdown {
            cancel(&j.segments);
            return;
        }
        let q = match qp {
            Some(q) => q,
            None => match dev.open_qpair(32) {
                Ok(q) => qp.insert(q),
                Err(_) => {
                    cancel(&j.segments);
                    return;
                }
            },
        };
        let written = write_all(
            q.as_mut(),
            log_writes_to_ops(writes, dev, self.cluster_size),
        )
        .and_then(|()| flush(q.as_mut()));
        if let Err(e) = written {
            self.turn_read_only(e.to_string());
            cancel(&j.segments);
            return;
        }
        let mut guard = self.committer.lock();
        let c = &mut *guard;
        let current = c.ckpt.as_ref().is_some_and(|k| k.token == job.token)
            && c.journal.epoch == job.epoch
            && !self.read_only_flag.load(Ordering::SeqCst);
        if !current {
            drop(guard);
            cancel(&j.segments);
            return;
        }
        let catch_up = c.ckpt.take().map(|k| k.catch_up).unwrap_or_default();
        let res = (|| -> Result<()> {
            if !catch_up.is_empty() {
                let mut ops = Vec::new();
                for payload in &catch_up {
                    let w = j.build_group(payload, &mut alloc_seg)?;
                    ops.extend(log_writes_to_ops(w, dev, self.cluster_size));
                }
                write_all(c.qp.as_mut(), ops)?;
                flush(c.qp.as_mut())?;
            }
            let mut sb = c.sb.clone();
            sb.generation += 1;
            sb.log_start = j.segments[0].0;
            sb.log_epoch = j.epoch;
            sb.log_start_seq = 1;
            sb.checkpoint_count += 1;
            sb_write(c.qp.as_mut(), dev, &sb)?;
            flush(c.qp.as_mut())?;
            c.sb = sb;
            Ok(())
        })();
        match res {
            Ok(()) => {
                let old = std::mem::replace(&mut c.journal, j);
                let mut st = self.state.lock();
                st.bg_segments.clear();
                for s in old.segments {
                    st.alloc.release(s);
                }
                st.reserve = reserve_for(
                    self.checkpoint_bytes,
                    self.cluster_size,
                    c.journal.snapshot_bytes,
                );
            }
            Err(e) => {
                self.turn_read_only(e.to_string());
                let segs = j.segments.clone();
                drop(guard);
                free_segments(&segs);
            }
        }
    }

    /// Writes one commit: the taken records as a group (or the inline checkpoint snapshot),
    /// with the flushes the durability rules ask for; `hook` (see `lead_commit_with`) runs
    /// before the first Flush that must cover the caller's in-flight data. Returns whether
    /// a group was written (nothing is written when there is nothing to commit, unless
    /// `force_group`: then an empty group is).
    fn commit_body(
        &self,
        c: &mut Committer,
        taken: Taken,
        mut hook: Option<&mut dyn FnMut() -> Result<()>>,
    ) -> Result<bool> {
        let Taken {
            records,
            ordered,
            snapshot,
            writes,
            force_group,
        } = taken;
        let dev = self.dev.as_ref();
        let mut need_data_flush = writes != c.flushed_writes;
        if records.is_empty() && snapshot.is_none() && !force_group {
            if need_data_flush {
                flush(c.qp.as_mut())?;
            }
            return Ok(false);
        }
        // A checked group: unordered records (depending only on data their DataChecks cover)
        // go out with no pre-flush; the one Flush after the log write makes the data and the
        // group durable together. Replay verifies the checks while the group is the log's
        // last, and this leader writes nothing after it before that Flush completed. An empty
        // (forced) group exposes nothing and needs neither the pre-flush nor the flag.
        let checked = snapshot.is_none() && !ordered && !records.is_empty() && self.data_checks;
        let skip_pre_flush = snapshot.is_none() && (records.is_empty() || checked);
        if !skip_pre_flush {
            if let Some(h) = hook.take() {
                // Ordered after all: the in-flight data must be complete before the
                // pre-flush, which then must happen.
                h()?;
                need_data_flush = true;
            }
        }
        // Otherwise the data the records point at must be durable before the records.
        if need_data_flush && !skip_pre_flush {
            flush(c.qp.as_mut())?;
        }
        let mut new_segment = || -> Result<ClusterIdx> {
            let mut st = self.state.lock();
            st.alloc
                .alloc()
                .ok_or_else(|| Error::NoSpace("no cluster left for the metadata log".into()))
        };
        match snapshot {
            None => {
                let payload = encode_all(&records);
                let flags = if checked { FLAG_CHECKED } else { 0 };
                let writes = c
                    .journal
                    .build_group_flagged(&payload, flags, &mut new_segment)?;
                if let Some(k) = c.ckpt.as_mut() {
                    // A background checkpoint must copy this group into its new log. The copy
                    // is not checked: it is written after this group's Flush completed.
                    k.catch_up.push(payload);
                }
                write_all(
                    c.qp.as_mut(),
                    log_writes_to_ops(writes, dev, self.cluster_size),
                )?;
                // The data a checked group vouches for must be complete before the Flush
                // (a Flush covers only writes completed when it is issued).
                if let Some(h) = hook.take() {
                    h()?;
                }
                flush(c.qp.as_mut())?;
            }
            Some(payload) => {
                let epoch = random_u64();
                let seg = new_segment()?;
                let mut j = Journal::new(
                    epoch,
                    1,
                    chain_seed(epoch),
                    seg,
                    c.journal.unit,
                    c.journal.seg_size,
                );
                let built = j.build_group(&payload, &mut new_segment);
                let writes = match built {
                    Ok(w) => w,
                    Err(e) => {
                        let mut st = self.state.lock();
                        for s in &j.segments {
                            st.alloc.release(*s);
                        }
                        return Err(e);
                    }
                };
                j.snapshot_bytes = j.bytes;
                write_all(
                    c.qp.as_mut(),
                    log_writes_to_ops(writes, dev, self.cluster_size),
                )?;
                flush(c.qp.as_mut())?;
                let mut sb = c.sb.clone();
                sb.generation += 1;
                sb.log_start = seg.0;
                sb.log_epoch = epoch;
                sb.log_start_seq = 1;
                sb.checkpoint_count += 1;
                sb_write(c.qp.as_mut(), dev, &sb)?;
                flush(c.qp.as_mut())?;
                // The new log is live: the old one's segments are free.
                let old = std::mem::replace(&mut c.journal, j);
                c.sb = sb;
                let mut st = self.state.lock();
                for s in old.segments {
                    st.alloc.release(s);
                }
                st.reserve = reserve_for(
                    self.checkpoint_bytes,
                    self.cluster_size,
                    c.journal.snapshot_bytes,
                );
            }
        }
        Ok(true)
    }
}

/// Whether the `DataCheck`s among `records` cover every byte of each (blob, cluster index)
/// in `maps` (so a group holding those unordered mappings may go out checked).
fn checks_cover_clusters(records: &[Record], maps: &[(BlobId, u64)], cluster_size: u64) -> bool {
    let mut ranges: Vec<(BlobId, u64, u64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::DataCheck {
                id, offset, len, ..
            } => Some((*id, *offset, offset.saturating_add(*len))),
            _ => None,
        })
        .collect();
    ranges.sort_unstable();
    maps.iter().all(|&(id, idx)| {
        let (start, end) = (idx * cluster_size, (idx + 1) * cluster_size);
        // Ranges of this blob in order of their start: extend the covered prefix of the
        // cluster until a gap.
        let mut covered = start;
        for &(_, a, b) in ranges.iter().filter(|r| r.0 == id) {
            if a > covered {
                break;
            }
            covered = covered.max(b);
            if covered >= end {
                return true;
            }
        }
        covered >= end
    })
}

/// What a leader took for one commit (`commit_body`).
struct Taken {
    records: Vec<Record>,
    /// Some record is ordered: the data it points at is flushed before the group.
    ordered: bool,
    /// An inline checkpoint's snapshot, written instead of the records as a new log.
    snapshot: Option<Vec<u8>>,
    /// The data-write count read before the records were taken: every Flush issued for
    /// this commit covers those writes.
    writes: u64,
    /// Write an (empty) group even with nothing to commit (`confirm`).
    force_group: bool,
}

/// A set of metadata changes applied atomically (see [`Blobstore::transaction`]).
pub struct Transaction<'a> {
    pub(crate) store: &'a Blobstore,
    pub(crate) records: Vec<Record>,
}

impl fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("records", &self.records.len())
            .finish()
    }
}

impl Transaction<'_> {
    /// Creates a thin blob of `clusters` clusters and returns the id it will have.
    pub fn create_blob(&mut self, clusters: u64) -> BlobId {
        let id = {
            let mut st = self.store.inner.state.lock();
            let id = BlobId(st.table.next_blob_id);
            // Reserve the id even if the transaction is dropped; ids are never reused. At the
            // (unreachable in practice) end of the id space the create fails at commit.
            st.table.next_blob_id = (id.0 + 1).min(crate::meta::MAX_BLOB_ID);
            id
        };
        self.records.push(Record::CreateBlob {
            id,
            flags: FLAG_THIN,
        });
        if clusters > 0 {
            self.records.push(Record::Resize { id, clusters });
        }
        id
    }

    /// Deletes a (closed) blob.
    pub fn delete_blob(&mut self, id: BlobId) -> &mut Self {
        self.records.push(Record::DeleteBlob { id });
        self
    }

    /// Resizes a thin blob (or shrinks any blob).
    pub fn resize(&mut self, id: BlobId, clusters: u64) -> &mut Self {
        self.records.push(Record::Resize { id, clusters });
        self
    }

    /// Sets an xattr.
    pub fn set_xattr(&mut self, id: BlobId, ns: XattrNs, name: &[u8], value: &[u8]) -> &mut Self {
        self.records.push(Record::SetXattr {
            id,
            ns,
            name: name.to_vec(),
            value: value.to_vec(),
        });
        self
    }

    /// Removes an xattr (the transaction fails if it does not exist).
    pub fn remove_xattr(&mut self, id: BlobId, ns: XattrNs, name: &[u8]) -> &mut Self {
        self.records.push(Record::RemoveXattr {
            id,
            ns,
            name: name.to_vec(),
        });
        self
    }

    /// Applies all changes, or none if any fails. Durable after the next `sync`.
    pub fn commit(self) -> Result<()> {
        self.commit_with(true)
    }

    /// `commit`, for changes that point at no data written before them (a new empty blob,
    /// names, attributes, symlink targets): the commit taking them needs no pre-flush for
    /// their sake (on stores with data checks). Records that map or free clusters are
    /// ordered regardless.
    pub fn commit_unordered(self) -> Result<()> {
        self.commit_with(false)
    }

    fn commit_with(self, ordered: bool) -> Result<()> {
        let inner = &self.store.inner;
        inner.check_writable()?;
        let mut st = inner.state.lock();
        // Policy checks the record layer does not make.
        for r in &self.records {
            match r {
                Record::SetXattr { name, value, .. } => check_xattr(name, value.len())?,
                Record::Resize { id, clusters } => {
                    if let Ok(e) = st.table.get(*id) {
                        let m = e.meta.read();
                        if m.flags & FLAG_READ_ONLY != 0 {
                            return Err(Error::ReadOnly(format!("blob {id} is read-only")));
                        }
                        if m.flags & FLAG_THIN == 0 && *clusters > m.clusters.len() as u64 {
                            return Err(Error::Invalid(format!(
                                "blob {id} is thick: grow it with Blob::resize"
                            )));
                        }
                    }
                }
                Record::RemoveXattr { id, .. } => {
                    if let Ok(e) = st.table.get(*id) {
                        if e.meta.read().flags & FLAG_READ_ONLY != 0 {
                            return Err(Error::ReadOnly(format!("blob {id} is read-only")));
                        }
                    }
                }
                _ => {}
            }
            if let Record::SetXattr { id, .. } = r {
                if let Ok(e) = st.table.get(*id) {
                    if e.meta.read().flags & FLAG_READ_ONLY != 0 {
                        return Err(Error::ReadOnly(format!("blob {id} is read-only")));
                    }
                }
            }
        }
        inner.apply_locked_with(&mut st, self.records, ordered)
    }

    /// Commits and makes it durable.
    pub fn commit_sync(self) -> Result<()> {
        let store = self.store.clone();
        self.commit()?;
        store.sync()
    }
}

/// The background checkpointer: waits for snapshots from commits and writes them.
fn bg_main(weak: std::sync::Weak<Inner>, bg: Arc<Bg>) {
    let mut qp: Option<Box<dyn QueuePair>> = None;
    loop {
        let job = {
            let mut st = bg.m.lock();
            loop {
                if st.shutdown {
                    return;
                }
                if let Some(j) = st.job.take() {
                    st.busy = true;
                    break j;
                }
                bg.cv.wait(&mut st);
            }
        };
        if let Some(inner) = weak.upgrade() {
            inner.run_bg_checkpoint(job, &bg, &mut qp);
        }
        let mut st = bg.m.lock();
        st.busy = false;
        bg.cv.notify_all();
    }
}
