//! `blobfs dump`: everything the metadata of an image says, as JSON.
//!
//! Both superblock copies, the checkpoint and every log group with its records, the replay
//! figures and where and why the log ended, every blob, and for a BlobFS filesystem the
//! directory tree. A damaged image is dumped as far as it can be read: problems go into
//! `"errors"` (and the exit code stays 0, since the dump itself worked). When the replay the
//! store would do at open fails, the log is read again with fsck's lenient replay (records
//! that do not apply are skipped and reported); when even that cannot start (no usable
//! checkpoint), it is walked block by block (every group whose blocks hold together is
//! decoded and applied as far as it goes). `"log"."complete"` is then false and
//! `"log"."read_by"` says which.
//!
//! The JSON is written while it is produced (serde serializes straight into a buffered
//! stdout), so a large image never becomes one large string.

use crate::human;
use crate::offline::{hex, kind_name, rfc3339, Locked};
use anyhow::{bail, Context, Result};
use blobfs::inode::{
    decode_entry, parse_orphan_key, InodeAttr, KEY_INODE, KEY_MARKER, KEY_SYMLINK, MARKER, S_IFMT,
};
use blobfs::ROOT_INO;
use blobstore::format::block::{chain_seed, check_jump, decode_block, BlockHeader, KIND_JUMP};
use blobstore::format::record::Record;
use blobstore::format::superblock::{Superblock, SB_SIZE};
use blobstore::meta::{Effects, Table};
use blobstore::recovery::{self, ReplayStats, TailInfo};
use blobstore::{BlobId, ClusterIdx, XattrNs, FLAG_READ_ONLY, FLAG_THIN};
use driver::{run_one, Device, Lba, Op, QueuePair};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashSet};
use std::io::{BufWriter, Write};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image file or block device holding a blobstore (BlobFS or bare).
    #[arg(value_name = "IMAGE")]
    pub path: String,
    /// Dump only this blob (decimal or 0x hex) and the log records that name it.
    #[arg(long, value_name = "ID")]
    pub blob: Option<String>,
    /// Leave out the records of the checkpoint and of the log (keep the figures).
    #[arg(long)]
    pub no_log: bool,
    /// Indent the JSON.
    #[arg(long)]
    pub pretty: bool,
}

/// Errors listed in the JSON at most; the rest are counted.
const MAX_ERRORS: usize = 1000;

/// Parses a blob id: decimal or 0x hex.
pub fn parse_blob_id(s: &str) -> Result<u64> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse::<u64>(),
    };
    r.ok()
        .with_context(|| format!("--blob {s:?}: not a blob id (decimal or 0x hex)"))
}

/// Errors found while reading, with a cap.
#[derive(Debug, Default)]
struct Errors {
    list: Vec<String>,
    dropped: u64,
}

impl Errors {
    fn push(&mut self, e: impl Into<String>) {
        if self.list.len() < MAX_ERRORS {
            self.list.push(e.into());
        } else {
            self.dropped += 1;
        }
    }
}

/// One superblock copy as found.
#[derive(Debug)]
struct Copy {
    /// The fields, when magic, CRC and size held (even if the values are refused).
    sb: Option<Superblock>,
    error: Option<String>,
}

/// A decoded log group.
#[derive(Debug)]
struct Group {
    records: Vec<Record>,
    /// Why the group could not be decoded (then `records` is empty).
    error: Option<String>,
}

/// What the log gave.
#[derive(Debug)]
struct Log {
    /// The replay the store does at open succeeded.
    complete: bool,
    /// How the log was read: `replay` (as the store does at open), `lenient_replay`
    /// (fsck's: what does not apply is skipped), or `block_walk` (no usable checkpoint:
    /// every group whose blocks hold together, decoded and applied as far as it goes).
    mode: &'static str,
    groups: Vec<Group>,
    stats: ReplayStats,
    tail: TailInfo,
    segments: Vec<u64>,
    table: Table,
}

/// Everything read from the image.
#[derive(Debug)]
struct Gathered {
    image: String,
    device: String,
    capacity: u64,
    lba_size: u32,
    copies: Vec<Copy>,
    active: Option<usize>,
    cluster_size: u64,
    log: Option<Log>,
    keep_records: bool,
    errors: Errors,
}

/// Reads `len` bytes at byte offset `off` (both multiples of the LBA size).
fn read_at(qp: &mut dyn QueuePair, dev: &dyn Device, off: u64, len: u64) -> Result<Vec<u8>> {
    let geom = dev.geometry();
    let lba = u64::from(geom.lba_size);
    let max = u64::from(geom.max_transfer.max(geom.lba_size));
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(max);
        let buf = dev.alloc_buf(usize::try_from(n)?);
        let got = run_one(
            qp,
            Op::Read {
                lba: Lba((off + done) / lba),
                buf,
            },
        )
        .with_context(|| format!("read of {n} bytes at offset {}", off + done))?;
        match got {
            Some(b) => out.extend_from_slice(b.as_slice()),
            None => bail!("read at offset {} returned no data", off + done),
        }
        done += n;
    }
    Ok(out)
}

fn gather(name: &str, dev: &dyn Device, keep_records: bool) -> Gathered {
    let geom = dev.geometry();
    let mut g = Gathered {
        image: name.to_string(),
        device: dev.describe(),
        capacity: geom.capacity(),
        lba_size: geom.lba_size,
        copies: Vec::new(),
        active: None,
        cluster_size: 0,
        log: None,
        keep_records,
        errors: Errors::default(),
    };
    let mut qp = match dev.open_qpair(16) {
        Ok(q) => q,
        Err(e) => {
            g.errors.push(format!("cannot open a queue pair: {e}"));
            return g;
        }
    };
    // Each copy on its own, with the fields even of a copy the loader refuses.
    if geom.capacity() >= 2 * SB_SIZE as u64 {
        match read_at(qp.as_mut(), dev, 0, 2 * SB_SIZE as u64) {
            Ok(raw) => {
                for i in 0..2 {
                    let bytes = raw.get(i * SB_SIZE..(i + 1) * SB_SIZE).unwrap_or_default();
                    g.copies.push(match Superblock::decode_unchecked(bytes) {
                        Ok(sb) => Copy {
                            error: sb.validate().err().map(|e| e.to_string()),
                            sb: Some(sb),
                        },
                        Err(e) => Copy {
                            sb: None,
                            error: Some(e.to_string()),
                        },
                    });
                }
            }
            Err(e) => g.errors.push(format!("cannot read the superblocks: {e:#}")),
        }
    }
    // The loader's choice.
    let sb = match recovery::read_superblocks(qp.as_mut(), dev) {
        Ok(pair) => {
            g.active = Some(pair.slot);
            pair.active
        }
        Err(e) => {
            g.errors.push(format!("superblocks: {e}"));
            return g;
        }
    };
    // A copy that is not usable is worth a line, unless it was simply never written
    // (mkfs writes one copy; the first checkpoint the other).
    for (i, c) in g.copies.iter().enumerate() {
        let never_written = c.sb.is_none() && sb.generation == 1;
        if let (Some(e), false) = (&c.error, never_written) {
            g.errors.push(format!("superblock copy {i}: {e}"));
        }
    }
    g.cluster_size = u64::from(sb.cluster_size);
    match recovery::replay(qp.as_mut(), dev, &sb, keep_records) {
        Ok(r) => {
            let groups = r
                .groups
                .unwrap_or_default()
                .into_iter()
                .map(|records| Group {
                    records,
                    error: None,
                })
                .collect();
            g.log = Some(Log {
                complete: true,
                mode: "replay",
                groups,
                stats: r.stats,
                tail: r.tail,
                segments: r.journal.segments.iter().map(|s| s.0).collect(),
                table: r.table,
            });
        }
        Err(e) => {
            g.errors.push(format!("log replay failed: {e}"));
            // fsck's replay: skips what does not apply and says why.
            let mut findings = Vec::new();
            match recovery::replay_lenient(qp.as_mut(), dev, &sb, keep_records, &mut findings) {
                Ok(r) => {
                    for f in findings {
                        let note = if f.note { " (note)" } else { "" };
                        g.errors.push(format!("{}{note}: {}", f.kind, f.detail));
                    }
                    g.log = Some(Log {
                        complete: false,
                        mode: "lenient_replay",
                        groups: r
                            .groups
                            .unwrap_or_default()
                            .into_iter()
                            .map(|records| Group {
                                records,
                                error: None,
                            })
                            .collect(),
                        stats: r.stats,
                        tail: r.tail,
                        segments: r.journal.segments.iter().map(|s| s.0).collect(),
                        table: r.table,
                    });
                }
                Err(e) => {
                    // No usable checkpoint: walk the blocks for whatever still reads.
                    g.errors.push(format!("lenient replay failed too: {e}"));
                    g.log = Some(walk_leniently(
                        qp.as_mut(),
                        dev,
                        &sb,
                        keep_records,
                        &mut g.errors,
                    ));
                }
            }
        }
    }
    g
}

/// Walks the log like the replay does, but goes on past what the replay refuses: groups
/// that do not decode are reported, records that do not apply are skipped and reported.
fn walk_leniently(
    qp: &mut dyn QueuePair,
    dev: &dyn Device,
    sb: &Superblock,
    keep: bool,
    errors: &mut Errors,
) -> Log {
    let mut log = Log {
        complete: false,
        mode: "block_walk",
        groups: Vec::new(),
        stats: ReplayStats::default(),
        tail: TailInfo {
            seg: ClusterIdx(sb.log_start),
            off: 0,
            reason: "not read".into(),
        },
        segments: Vec::new(),
        table: Table::new(sb.cluster_count, u64::from(sb.cluster_size)),
    };
    if let Err(e) = recovery::check_device(sb, dev) {
        errors.push(format!("log not read: {e}"));
        return log;
    }
    if check_jump(sb.log_start, sb.cluster_count).is_err() {
        errors.push(format!(
            "log not read: it starts at cluster {} outside 1..{}",
            sb.log_start, sb.cluster_count
        ));
        return log;
    }
    let seg_size = u64::from(sb.cluster_size);
    let unit = u64::from(sb.log_unit).max(1);
    let mut seg = sb.log_start;
    let mut visited = HashSet::from([seg]);
    let read_seg = |qp: &mut dyn QueuePair, seg: u64| read_at(qp, dev, seg * seg_size, seg_size);
    let mut buf = match read_seg(qp, seg) {
        Ok(b) => b,
        Err(e) => {
            errors.push(format!("cannot read log segment {seg}: {e:#}"));
            return log;
        }
    };
    log.segments.push(seg);
    log.stats.segments += 1;
    log.stats.bytes_read += seg_size;
    let mut off = 0u64;
    let mut seq = sb.log_start_seq;
    let mut prev = chain_seed(sb.log_epoch);
    let mut payload = Vec::new();
    let mut group_blocks = 0u64;
    let mut first = true;
    let reason = loop {
        let rest = buf
            .get(usize::try_from(off).unwrap_or(usize::MAX)..)
            .unwrap_or_default();
        let (h, p, crc) = match decode_block(rest, sb.log_epoch, seq, prev) {
            Ok(x) => x,
            Err(why) => break format!("{why:?}"),
        };
        log.stats.blocks += 1;
        group_blocks += 1;
        seq += 1;
        prev = crc;
        if h.kind == KIND_JUMP {
            if let Err(e) = check_jump(h.jump_to, sb.cluster_count) {
                errors.push(format!("log: {e}"));
                break "bad jump".into();
            }
            if !visited.insert(h.jump_to) {
                errors.push(format!("log jumps back to segment {} (cycle)", h.jump_to));
                break "jump cycle".into();
            }
            seg = h.jump_to;
            buf = match read_seg(qp, seg) {
                Ok(b) => b,
                Err(e) => {
                    errors.push(format!("cannot read log segment {seg}: {e:#}"));
                    break "unreadable segment".into();
                }
            };
            log.segments.push(seg);
            log.stats.segments += 1;
            log.stats.bytes_read += seg_size;
            off = 0;
            continue;
        }
        off += BlockHeader::padded_len(p.len(), unit as usize) as u64;
        payload.extend_from_slice(p);
        if h.continues() {
            continue;
        }
        let index = log.groups.len();
        match Record::decode_all(&payload) {
            Ok(records) => {
                apply_leniently(&mut log.table, &records, first, index, errors);
                log.stats.groups += 1;
                log.stats.records += records.len() as u64;
                log.groups.push(Group {
                    records: if keep { records } else { Vec::new() },
                    error: None,
                });
            }
            Err(e) => {
                errors.push(format!("log group {index}: {e}"));
                log.groups.push(Group {
                    records: Vec::new(),
                    error: Some(e.to_string()),
                });
            }
        }
        first = false;
        payload.clear();
        group_blocks = 0;
        if off + unit > seg_size {
            errors.push(format!("log block overruns segment {seg}"));
            break "block overruns its segment".into();
        }
    };
    log.stats.discarded_blocks = group_blocks;
    log.tail = TailInfo {
        seg: ClusterIdx(seg),
        off,
        reason,
    };
    log
}

fn apply_leniently(
    table: &mut Table,
    records: &[Record],
    first: bool,
    group: usize,
    errors: &mut Errors,
) {
    let mut body = records;
    if first {
        match (records.first(), records.last()) {
            (
                Some(Record::SnapshotBegin { next_blob_id, .. }),
                Some(Record::SnapshotEnd { .. }),
            ) if records.len() >= 2 => {
                table.next_blob_id = *next_blob_id;
                body = records.get(1..records.len() - 1).unwrap_or_default();
            }
            _ => errors.push("log group 0: not a complete snapshot (checkpoint)"),
        }
    }
    for (i, r) in body.iter().enumerate() {
        if matches!(r, Record::SnapshotBegin { .. } | Record::SnapshotEnd { .. }) {
            errors.push(format!("log group {group}: snapshot marker out of place"));
            continue;
        }
        if let Err(e) = table.apply(r, &mut Effects::default()) {
            errors.push(format!(
                "log group {group} record {}: does not apply: {e}",
                i + usize::from(first)
            ));
        }
    }
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<()> {
    let blob = args.blob.as_deref().map(parse_blob_id).transpose()?;
    let img = Locked::new(&args.path, false)?;
    let dev = img.target.open_store_device(true)?;
    let g = gather(&img.name(), dev.as_ref(), !args.no_log);
    if let (Some(id), Some(log)) = (blob, &g.log) {
        if log.complete && !log.table.blobs.contains_key(&BlobId(id)) {
            bail!("{}: blob {id} ({id:#x}) not found", img.name());
        }
    }
    let is_fs = g.log.as_ref().is_some_and(|l| is_blobfs(&l.table));
    let view = View {
        g: &g,
        blob,
        is_fs,
        extra_errors: RefCell::new(Errors::default()),
    };
    let mut w = BufWriter::with_capacity(1 << 20, out);
    if args.pretty {
        serde_json::to_writer_pretty(&mut w, &view)
    } else {
        serde_json::to_writer(&mut w, &view)
    }
    .context("cannot write the JSON")?;
    writeln!(w)?;
    w.flush()?;
    Ok(())
}

fn is_blobfs(t: &Table) -> bool {
    t.blobs.get(&BlobId(ROOT_INO)).is_some_and(|e| {
        e.meta
            .read()
            .internal
            .get(KEY_MARKER)
            .is_some_and(|m| m == MARKER)
    })
}

// ---------------------------------------------------------------------------------------
// Serialization: views over what was gathered, written as they are walked.

struct View<'a> {
    g: &'a Gathered,
    blob: Option<u64>,
    is_fs: bool,
    /// Problems found while writing (the tree walk); listed with the others at the end.
    extra_errors: RefCell<Errors>,
}

impl Serialize for View<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let g = self.g;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("image", &g.image)?;
        #[derive(Serialize)]
        struct Dev<'b> {
            describe: &'b str,
            capacity_bytes: u64,
            lba_size: u32,
        }
        m.serialize_entry(
            "device",
            &Dev {
                describe: &g.device,
                capacity_bytes: g.capacity,
                lba_size: g.lba_size,
            },
        )?;
        m.serialize_entry(
            "filesystem_type",
            if self.is_fs {
                "blobfs"
            } else if g.log.is_some() {
                "blobstore"
            } else {
                "unknown"
            },
        )?;
        if let Some(id) = self.blob {
            let log = g.log.as_ref();
            m.serialize_entry(
                "blob",
                &log.and_then(|l| {
                    l.table.blobs.get(&BlobId(id)).map(|e| BlobView {
                        id: BlobId(id),
                        entry: e,
                        cluster_size: g.cluster_size,
                        is_fs: self.is_fs,
                    })
                }),
            )?;
            if log.is_some_and(|l| !l.table.blobs.contains_key(&BlobId(id))) {
                self.extra_errors.borrow_mut().push(format!(
                    "blob {id} ({id:#x}) not found in what could be read"
                ));
            }
            if g.keep_records {
                if let Some(l) = log {
                    m.serialize_entry(
                        "records",
                        &BlobRecords {
                            groups: &l.groups,
                            id: BlobId(id),
                            is_fs: self.is_fs,
                        },
                    )?;
                }
            }
        } else {
            m.serialize_entry(
                "superblocks",
                &Superblocks {
                    copies: &g.copies,
                    active: g.active,
                },
            )?;
            if let Some(l) = &g.log {
                m.serialize_entry(
                    "checkpoint",
                    &Checkpoint {
                        log: l,
                        keep: g.keep_records,
                        is_fs: self.is_fs,
                    },
                )?;
                m.serialize_entry(
                    "log",
                    &LogView {
                        log: l,
                        keep: g.keep_records,
                        is_fs: self.is_fs,
                    },
                )?;
                m.serialize_entry(
                    "blobs",
                    &Blobs {
                        table: &l.table,
                        cluster_size: g.cluster_size,
                        is_fs: self.is_fs,
                    },
                )?;
                if self.is_fs {
                    m.serialize_entry(
                        "filesystem",
                        &FsView {
                            table: &l.table,
                            errors: &self.extra_errors,
                        },
                    )?;
                } else {
                    m.serialize_entry("filesystem", &None::<()>)?;
                }
            }
        }
        let extra = self.extra_errors.borrow();
        let all: Vec<&String> = g.errors.list.iter().chain(extra.list.iter()).collect();
        m.serialize_entry("errors", &all)?;
        let dropped = g.errors.dropped + extra.dropped;
        if dropped > 0 {
            m.serialize_entry("errors_not_listed", &dropped)?;
        }
        m.end()
    }
}

#[derive(Serialize)]
struct CopyOut<'a> {
    copy: usize,
    offset: usize,
    active: bool,
    valid: bool,
    error: Option<&'a str>,
    /// The fields, when magic, CRC and size held.
    #[serde(flatten)]
    fields: Option<SbOut>,
}

#[derive(Serialize)]
struct SbOut {
    version: u32,
    compat: u64,
    ro_compat: u64,
    incompat: u64,
    uuid: String,
    generation: u64,
    log_unit: u32,
    page_size: u32,
    cluster_size: u32,
    cluster_count: u64,
    log_start: u64,
    log_epoch: u64,
    log_epoch_hex: String,
    log_start_seq: u64,
    checkpoint_count: u64,
}

/// One entry of the directory tree.
#[derive(Default, Serialize)]
struct TreeEntry {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_hex: Option<String>,
    ino: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nlink: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rdev: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    atime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ctime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    crtime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    xattrs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

struct Superblocks<'a> {
    copies: &'a [Copy],
    active: Option<usize>,
}

impl Serialize for Superblocks<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("active_copy", &self.active)?;
        let copies: Vec<CopyOut<'_>> = self
            .copies
            .iter()
            .enumerate()
            .map(|(i, c)| CopyOut {
                copy: i,
                offset: i * SB_SIZE,
                active: self.active == Some(i),
                valid: c.error.is_none(),
                error: c.error.as_deref(),
                fields: c.sb.as_ref().map(|sb| SbOut {
                    version: sb.version,
                    compat: sb.compat,
                    ro_compat: sb.ro_compat,
                    incompat: sb.incompat,
                    uuid: human::uuid(&sb.uuid),
                    generation: sb.generation,
                    log_unit: sb.log_unit,
                    page_size: sb.page_size,
                    cluster_size: sb.cluster_size,
                    cluster_count: sb.cluster_count,
                    log_start: sb.log_start,
                    log_epoch: sb.log_epoch,
                    log_epoch_hex: format!("{:#018x}", sb.log_epoch),
                    log_start_seq: sb.log_start_seq,
                    checkpoint_count: sb.checkpoint_count,
                }),
            })
            .collect();
        m.serialize_entry("copies", &copies)?;
        m.end()
    }
}

struct Checkpoint<'a> {
    log: &'a Log,
    keep: bool,
    is_fs: bool,
}

impl Serialize for Checkpoint<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("segment", &self.log.segments.first())?;
        if let Some(g) = self.log.groups.first().filter(|_| self.keep) {
            if let Some(Record::SnapshotBegin {
                next_blob_id,
                blob_count,
            }) = g.records.first()
            {
                m.serialize_entry("next_blob_id", next_blob_id)?;
                m.serialize_entry("blob_count", blob_count)?;
            }
            m.serialize_entry("record_count", &g.records.len())?;
            if let Some(e) = &g.error {
                m.serialize_entry("error", e)?;
            }
            m.serialize_entry(
                "records",
                &Records {
                    records: &g.records,
                    is_fs: self.is_fs,
                },
            )?;
        }
        m.end()
    }
}

struct LogView<'a> {
    log: &'a Log,
    keep: bool,
    is_fs: bool,
}

impl Serialize for LogView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let l = self.log;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("complete", &l.complete)?;
        m.serialize_entry("read_by", l.mode)?;
        m.serialize_entry("segments", &l.segments)?;
        #[derive(Serialize)]
        struct Stats {
            segments: u64,
            blocks: u64,
            groups: u64,
            records: u64,
            bytes_read: u64,
            discarded_blocks: u64,
            discarded_checked_groups: u64,
            check_bytes_read: u64,
        }
        #[derive(Serialize)]
        struct Tail<'b> {
            segment: u64,
            offset: u64,
            reason: &'b str,
        }
        m.serialize_entry(
            "stats",
            &Stats {
                segments: l.stats.segments,
                blocks: l.stats.blocks,
                groups: l.stats.groups,
                records: l.stats.records,
                bytes_read: l.stats.bytes_read,
                discarded_blocks: l.stats.discarded_blocks,
                discarded_checked_groups: l.stats.discarded_checked_groups,
                check_bytes_read: l.stats.check_bytes_read,
            },
        )?;
        m.serialize_entry(
            "tail",
            &Tail {
                segment: l.tail.seg.0,
                offset: l.tail.off,
                reason: &l.tail.reason,
            },
        )?;
        if self.keep {
            // Group 0 is the checkpoint, listed above.
            m.serialize_entry(
                "groups",
                &Groups {
                    groups: l.groups.get(1..).unwrap_or_default(),
                    is_fs: self.is_fs,
                },
            )?;
        }
        m.end()
    }
}

struct Groups<'a> {
    groups: &'a [Group],
    is_fs: bool,
}

impl Serialize for Groups<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.groups.len()))?;
        for (i, g) in self.groups.iter().enumerate() {
            seq.serialize_element(&GroupView {
                index: i + 1,
                group: g,
                is_fs: self.is_fs,
            })?;
        }
        seq.end()
    }
}

struct GroupView<'a> {
    index: usize,
    group: &'a Group,
    is_fs: bool,
}

impl Serialize for GroupView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("index", &self.index)?;
        if let Some(e) = &self.group.error {
            m.serialize_entry("error", e)?;
        }
        m.serialize_entry(
            "records",
            &Records {
                records: &self.group.records,
                is_fs: self.is_fs,
            },
        )?;
        m.end()
    }
}

struct Records<'a> {
    records: &'a [Record],
    is_fs: bool,
}

impl Serialize for Records<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.records.len()))?;
        for r in self.records {
            seq.serialize_element(&Rec {
                r,
                is_fs: self.is_fs,
                group: None,
            })?;
        }
        seq.end()
    }
}

/// The records of every group that name one blob.
struct BlobRecords<'a> {
    groups: &'a [Group],
    id: BlobId,
    is_fs: bool,
}

fn record_blob(r: &Record) -> Option<BlobId> {
    match r {
        Record::CreateBlob { id, .. }
        | Record::DeleteBlob { id }
        | Record::Resize { id, .. }
        | Record::MapRun { id, .. }
        | Record::SetXattr { id, .. }
        | Record::RemoveXattr { id, .. }
        | Record::SetFlags { id, .. }
        | Record::DataCheck { id, .. }
        | Record::SetParent { id, .. } => Some(*id),
        // Names two blobs: listed under the one clusters move from (and see `names_blob`).
        Record::MoveClusters { from, .. } => Some(*from),
        Record::SnapshotBegin { .. } | Record::SnapshotEnd { .. } => None,
    }
}

/// Whether `r` concerns blob `id` (as its subject, or as the parent or target it names).
fn names_blob(r: &Record, id: BlobId) -> bool {
    record_blob(r) == Some(id)
        || matches!(r, Record::MoveClusters { to, .. } if *to == id)
        || matches!(r, Record::SetParent { parent, .. } if *parent == id)
}

impl Serialize for BlobRecords<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for (gi, g) in self.groups.iter().enumerate() {
            for r in &g.records {
                if names_blob(r, self.id) {
                    seq.serialize_element(&Rec {
                        r,
                        is_fs: self.is_fs,
                        group: Some(gi),
                    })?;
                }
            }
        }
        seq.end()
    }
}

fn flag_names(flags: u64) -> Vec<String> {
    let mut v = Vec::new();
    if flags & FLAG_THIN != 0 {
        v.push("thin".to_string());
    }
    if flags & FLAG_READ_ONLY != 0 {
        v.push("read_only".to_string());
    }
    let unknown = flags & !(FLAG_THIN | FLAG_READ_ONLY);
    if unknown != 0 {
        v.push(format!("unknown:{unknown:#x}"));
    }
    v
}

fn ns_name(ns: XattrNs) -> &'static str {
    match ns {
        XattrNs::User => "user",
        XattrNs::Internal => "internal",
    }
}

/// A name as a JSON string when it is printable UTF-8.
fn printable(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b)
        .ok()
        .filter(|s| !s.chars().any(char::is_control))
}

/// The fields describing one xattr (name, and the value when given), decoded where
/// BlobFS gives the bytes a meaning.
fn xattr_fields<M: SerializeMap>(
    m: &mut M,
    ns: XattrNs,
    name: &[u8],
    value: Option<&[u8]>,
    is_fs: bool,
) -> Result<(), M::Error> {
    match printable(name) {
        Some(s) => m.serialize_entry("name", s)?,
        None => m.serialize_entry("name_hex", &hex(name))?,
    }
    let fs_internal = is_fs && ns == XattrNs::Internal;
    if fs_internal {
        let key = if name == KEY_INODE {
            "inode"
        } else if name == KEY_SYMLINK {
            "symlink_target"
        } else if name == KEY_MARKER {
            "fs_marker"
        } else if let Some(ino) = parse_orphan_key(name) {
            m.serialize_entry("orphan_ino", &ino)?;
            "orphan"
        } else if name.first() == Some(&0) {
            "reserved"
        } else {
            "dir_entry"
        };
        m.serialize_entry("key", key)?;
    }
    let Some(v) = value else {
        return Ok(());
    };
    m.serialize_entry("value_len", &v.len())?;
    if fs_internal {
        if name == KEY_INODE {
            match InodeAttr::decode(v) {
                Ok(a) => return m.serialize_entry("inode", &InodeView(&a)),
                Err(e) => m.serialize_entry("decode_error", &e.to_string())?,
            }
        } else if name == KEY_SYMLINK {
            if let Some(t) = printable(v) {
                m.serialize_entry("target", t)?;
            }
        } else if name.first() != Some(&0) {
            match decode_entry(v) {
                Ok((ino, kind)) => {
                    #[derive(Serialize)]
                    struct Entry {
                        ino: u64,
                        #[serde(rename = "type")]
                        ty: &'static str,
                    }
                    return m.serialize_entry(
                        "entry",
                        &Entry {
                            ino,
                            ty: kind_name(kind),
                        },
                    );
                }
                Err(e) => m.serialize_entry("decode_error", &e.to_string())?,
            }
        }
    }
    m.serialize_entry("value_hex", &hex(v))
}

struct InodeView<'a>(&'a InodeAttr);

impl Serialize for InodeView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let a = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("kind", kind_name(a.kind()))?;
        m.serialize_entry("mode", &format!("{:o}", a.mode))?;
        m.serialize_entry("perm", &format!("{:04o}", a.mode & !S_IFMT))?;
        m.serialize_entry("uid", &a.uid)?;
        m.serialize_entry("gid", &a.gid)?;
        m.serialize_entry("nlink", &a.nlink)?;
        m.serialize_entry("rdev", &a.rdev)?;
        m.serialize_entry("size", &a.size)?;
        m.serialize_entry("atime", &rfc3339(a.atime))?;
        m.serialize_entry("mtime", &rfc3339(a.mtime))?;
        m.serialize_entry("ctime", &rfc3339(a.ctime))?;
        m.serialize_entry("crtime", &rfc3339(a.crtime))?;
        m.serialize_entry("parent", &a.parent)?;
        m.end()
    }
}

struct Rec<'a> {
    r: &'a Record,
    is_fs: bool,
    /// The group it came from (in `--blob` listings).
    group: Option<usize>,
}

impl Serialize for Rec<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if let Some(g) = self.group {
            m.serialize_entry("group", &g)?;
        }
        match self.r {
            Record::CreateBlob { id, flags } => {
                m.serialize_entry("type", "create_blob")?;
                m.serialize_entry("id", &id.0)?;
                m.serialize_entry("flags", flags)?;
                m.serialize_entry("flags_decoded", &flag_names(*flags))?;
            }
            Record::DeleteBlob { id } => {
                m.serialize_entry("type", "delete_blob")?;
                m.serialize_entry("id", &id.0)?;
            }
            Record::Resize { id, clusters } => {
                m.serialize_entry("type", "resize")?;
                m.serialize_entry("id", &id.0)?;
                m.serialize_entry("clusters", clusters)?;
            }
            Record::MapRun {
                id,
                index,
                first,
                count,
            } => {
                m.serialize_entry("type", "map_run")?;
                m.serialize_entry("id", &id.0)?;
                m.serialize_entry("index", index)?;
                m.serialize_entry("first_cluster", &first.0)?;
                m.serialize_entry("count", count)?;
                if !first.is_some() {
                    m.serialize_entry("unmap", &true)?;
                }
            }
            Record::SetXattr {
                id,
                ns,
                name,
                value,
            } => {
                m.serialize_entry("type", "set_xattr")?;
                m.serialize_entry("id", &id.0)?;
                m.serialize_entry("ns", ns_name(*ns))?;
                xattr_fields(&mut m, *ns, name, Some(value), self.is_fs)?;
            }
            Record::RemoveXattr { id, ns, name } => {
                m.serialize_entry("type", "remove_xattr")?;
                m.serialize_entry("id", &id.0)?;
                m.serialize_entry("ns", ns_name(*ns))?;
                xattr_fields(&mut m, *ns, name, None, self.is_fs)?;
            }
            Record::SetFlags { id, flags } => {
                m.serialize_entry("type", "set_flags")?;
                m.serialize_entry("id", &id.0)?;
                m.serialize_entry("flags", flags)?;
                m.serialize_entry("flags_decoded", &flag_names(*flags))?;
            }
            Record::SnapshotBegin {
                next_blob_id,
                blob_count,
            } => {
                m.serialize_entry("type", "snapshot_begin")?;
                m.serialize_entry("next_blob_id", next_blob_id)?;
                m.serialize_entry("blob_count", blob_count)?;
            }
            Record::SnapshotEnd { blob_count } => {
                m.serialize_entry("type", "snapshot_end")?;
                m.serialize_entry("blob_count", blob_count)?;
            }
            Record::DataCheck {
                id,
                offset,
                len,
                crc,
            } => {
                m.serialize_entry("type", "data_check")?;
                m.serialize_entry("id", &id.0)?;
                m.serialize_entry("offset", offset)?;
                m.serialize_entry("len", len)?;
                m.serialize_entry("crc32c", &format!("{crc:#010x}"))?;
            }
            Record::SetParent {
                id,
                parent,
                through,
            } => {
                m.serialize_entry("type", "set_parent")?;
                m.serialize_entry("id", &id.0)?;
                m.serialize_entry("parent", &parent.0)?;
                m.serialize_entry("through", through)?;
            }
            Record::MoveClusters { from, to, count } => {
                m.serialize_entry("type", "move_clusters")?;
                m.serialize_entry("from", &from.0)?;
                m.serialize_entry("to", &to.0)?;
                m.serialize_entry("count", count)?;
            }
        }
        m.end()
    }
}

struct Blobs<'a> {
    table: &'a Table,
    cluster_size: u64,
    is_fs: bool,
}

impl Serialize for Blobs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.table.blobs.len()))?;
        for (id, e) in &self.table.blobs {
            seq.serialize_element(&BlobView {
                id: *id,
                entry: e,
                cluster_size: self.cluster_size,
                is_fs: self.is_fs,
            })?;
        }
        seq.end()
    }
}

struct BlobView<'a> {
    id: BlobId,
    entry: &'a blobstore::meta::BlobEntry,
    cluster_size: u64,
    is_fs: bool,
}

struct XattrList<'a> {
    ns: XattrNs,
    map: &'a std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    is_fs: bool,
}

impl Serialize for XattrList<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct One<'b>(XattrNs, &'b [u8], &'b [u8], bool);
        impl Serialize for One<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(None)?;
                xattr_fields(&mut m, self.0, self.1, Some(self.2), self.3)?;
                m.end()
            }
        }
        let mut seq = s.serialize_seq(Some(self.map.len()))?;
        for (k, v) in self.map {
            seq.serialize_element(&One(self.ns, k, v, self.is_fs))?;
        }
        seq.end()
    }
}

impl Serialize for BlobView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let meta = self.entry.meta.read();
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &self.id.0)?;
        m.serialize_entry("id_hex", &format!("{:#x}", self.id.0))?;
        m.serialize_entry("flags", &meta.flags)?;
        m.serialize_entry("flags_decoded", &flag_names(meta.flags))?;
        m.serialize_entry("clusters", &meta.clusters.len())?;
        m.serialize_entry(
            "size_bytes",
            &(meta.clusters.len() as u64).saturating_mul(self.cluster_size),
        )?;
        m.serialize_entry("allocated", &meta.allocated())?;
        #[derive(Serialize)]
        struct Run {
            index: u64,
            /// None: a hole (unallocated).
            cluster: Option<u64>,
            count: u64,
        }
        let runs: Vec<Run> = meta
            .runs()
            .into_iter()
            .map(|(index, first, count)| Run {
                index,
                cluster: first.is_some().then_some(first.0),
                count,
            })
            .collect();
        m.serialize_entry("runs", &runs)?;
        m.serialize_entry(
            "xattrs",
            &XattrList {
                ns: XattrNs::User,
                map: &meta.xattrs,
                is_fs: self.is_fs,
            },
        )?;
        m.serialize_entry(
            "internal",
            &XattrList {
                ns: XattrNs::Internal,
                map: &meta.internal,
                is_fs: self.is_fs,
            },
        )?;
        m.end()
    }
}

/// The BlobFS view: the directory tree from the root, orphans, and blobs that neither
/// reaches.
struct FsView<'a> {
    table: &'a Table,
    errors: &'a RefCell<Errors>,
}

impl Serialize for FsView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let reached = RefCell::new(BTreeSet::new());
        let mut m = s.serialize_map(None)?;
        m.serialize_entry(
            "tree",
            &Tree {
                table: self.table,
                errors: self.errors,
                reached: &reached,
            },
        )?;
        let orphans: Vec<u64> = self
            .table
            .blobs
            .get(&BlobId(ROOT_INO))
            .map(|e| {
                e.meta
                    .read()
                    .internal
                    .keys()
                    .filter_map(|k| parse_orphan_key(k))
                    .collect()
            })
            .unwrap_or_default();
        let reached = reached.into_inner();
        let unreachable: Vec<u64> = self
            .table
            .blobs
            .keys()
            .map(|id| id.0)
            .filter(|id| !reached.contains(id) && !orphans.contains(id))
            .collect();
        m.serialize_entry("orphans", &orphans)?;
        m.serialize_entry("unreachable", &unreachable)?;
        m.end()
    }
}

struct Tree<'a> {
    table: &'a Table,
    errors: &'a RefCell<Errors>,
    reached: &'a RefCell<BTreeSet<u64>>,
}

fn join_path(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl Serialize for Tree<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        // Pre-order, names in byte order; each directory is entered once.
        let mut stack: Vec<(Vec<u8>, u64)> = vec![(b"/".to_vec(), ROOT_INO)];
        let mut dirs_seen: HashSet<u64> = HashSet::new();
        while let Some((path, ino)) = stack.pop() {
            let p = String::from_utf8_lossy(&path).into_owned();
            let mut v = TreeEntry {
                path: p.clone(),
                path_hex: printable(&path).is_none().then(|| hex(&path)),
                ino,
                ..TreeEntry::default()
            };
            self.reached.borrow_mut().insert(ino);
            let fail = |v: &mut TreeEntry, e: String| {
                v.error = Some(e.clone());
                self.errors.borrow_mut().push(e);
            };
            let Some(entry) = self.table.blobs.get(&BlobId(ino)) else {
                fail(&mut v, format!("{p}: inode {ino} has no blob"));
                seq.serialize_element(&v)?;
                continue;
            };
            let meta = entry.meta.read();
            let attr = match meta.internal.get(KEY_INODE).map(|b| InodeAttr::decode(b)) {
                Some(Ok(a)) => a,
                Some(Err(e)) => {
                    fail(&mut v, format!("{p}: inode {ino}: {e}"));
                    seq.serialize_element(&v)?;
                    continue;
                }
                None => {
                    fail(&mut v, format!("{p}: blob {ino} has no inode record"));
                    seq.serialize_element(&v)?;
                    continue;
                }
            };
            let kind = attr.kind();
            v.kind = Some(kind_name(kind));
            v.size = Some(attr.size);
            v.mode = Some(format!("{:04o}", attr.mode & !S_IFMT));
            v.nlink = Some(attr.nlink);
            v.uid = Some(attr.uid);
            v.gid = Some(attr.gid);
            v.rdev = (attr.rdev != 0).then_some(attr.rdev);
            v.atime = Some(rfc3339(attr.atime));
            v.mtime = Some(rfc3339(attr.mtime));
            v.ctime = Some(rfc3339(attr.ctime));
            v.crtime = Some(rfc3339(attr.crtime));
            v.xattrs = meta
                .xattrs
                .keys()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            match kind {
                blobfs::Kind::Symlink => match meta.internal.get(KEY_SYMLINK) {
                    Some(t) => v.target = Some(String::from_utf8_lossy(t).into_owned()),
                    None => fail(&mut v, format!("{p}: symlink {ino} has no target")),
                },
                blobfs::Kind::Dir => {
                    v.parent = Some(attr.parent);
                    if !dirs_seen.insert(ino) {
                        fail(
                            &mut v,
                            format!("{p}: directory {ino} reached again (cycle or second link)"),
                        );
                    } else {
                        let mut children = Vec::new();
                        for (name, val) in meta.internal.iter() {
                            if name.first() == Some(&0) {
                                continue;
                            }
                            match decode_entry(val) {
                                Ok((cino, _)) => children.push((join_path(&path, name), cino)),
                                Err(e) => self.errors.borrow_mut().push(format!(
                                    "{}: bad directory entry: {e}",
                                    String::from_utf8_lossy(&join_path(&path, name))
                                )),
                            }
                        }
                        stack.extend(children.into_iter().rev());
                    }
                }
                _ => {}
            }
            drop(meta);
            seq.serialize_element(&v)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blobstore::format::block::{encode_block, KIND_RECORDS};
    use blobstore::format::record::encode_all;
    use blobstore::{BlobOptions, Blobstore, FormatOptions, OpenOptions};
    use driver::DmaBuf;
    use std::sync::Arc;

    #[test]
    fn blob_ids() {
        assert_eq!(parse_blob_id("42").unwrap(), 42);
        assert_eq!(parse_blob_id("0x2a").unwrap(), 42);
        assert_eq!(parse_blob_id("0X2A").unwrap(), 42);
        assert!(parse_blob_id("x").is_err());
        assert!(parse_blob_id("-1").is_err());
    }

    /// A log whose blocks hold together but whose records do not apply: the replay
    /// refuses it, the lenient walk lists every group and reports the bad record.
    #[test]
    fn lenient_walk_goes_past_records_that_do_not_apply() {
        let dev: Arc<dyn Device> = driver::open_uri("mem:16M").unwrap();
        Blobstore::format(
            Arc::clone(&dev),
            &FormatOptions {
                cluster_size: 64 << 10,
                ..FormatOptions::default()
            },
        )
        .unwrap();
        let store = Blobstore::open(
            Arc::clone(&dev),
            OpenOptions {
                background_checkpoint: false,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        let a = store.create_blob(BlobOptions::default()).unwrap();
        store.sync().unwrap();
        let b = store.create_blob(BlobOptions::default()).unwrap();
        store.sync().unwrap();
        drop(store);

        // Find the end of the chain as the replay does, then append two groups: one that
        // deletes a blob that does not exist, and a good one after it.
        let mut qp = dev.open_qpair(4).unwrap();
        let sb = recovery::read_superblocks(qp.as_mut(), dev.as_ref())
            .unwrap()
            .active;
        let cs = u64::from(sb.cluster_size);
        let unit = sb.log_unit as usize;
        let seg = sb.log_start;
        let mut buf = read_at(qp.as_mut(), dev.as_ref(), seg * cs, cs).unwrap();
        let (mut off, mut seq, mut prev) = (0usize, sb.log_start_seq, chain_seed(sb.log_epoch));
        while let Ok((_, p, crc)) = decode_block(&buf[off..], sb.log_epoch, seq, prev) {
            off += BlockHeader::padded_len(p.len(), unit);
            seq += 1;
            prev = crc;
        }
        let start = off;
        for recs in [
            vec![Record::DeleteBlob { id: BlobId(999) }],
            vec![Record::SetXattr {
                id: a,
                ns: XattrNs::User,
                name: b"after".to_vec(),
                value: b"x".to_vec(),
            }],
        ] {
            let payload = encode_all(&recs);
            let h = BlockHeader {
                kind: KIND_RECORDS,
                flags: 0,
                epoch: sb.log_epoch,
                seq,
                prev_crc: prev,
                payload_len: payload.len() as u32,
                jump_to: 0,
            };
            let len = BlockHeader::padded_len(payload.len(), unit);
            prev = encode_block(&h, &payload, &mut buf[off..off + len]);
            off += len;
            seq += 1;
        }
        let mut w = DmaBuf::zeroed(off - start);
        w.as_mut_slice().copy_from_slice(&buf[start..off]);
        run_one(
            qp.as_mut(),
            Op::Write {
                lba: Lba((seg * cs + start as u64) / u64::from(dev.geometry().lba_size)),
                buf: w,
            },
        )
        .unwrap();
        drop(qp);

        let g = gather("mem", dev.as_ref(), true);
        let log = g.log.as_ref().unwrap();
        assert!(!log.complete);
        assert!(
            g.errors
                .list
                .iter()
                .any(|e| e.contains("log replay failed")),
            "{:?}",
            g.errors.list
        );
        assert!(
            g.errors.list.iter().any(|e| e.contains("invalid-record")),
            "{:?}",
            g.errors.list
        );
        assert_eq!(log.mode, "lenient_replay");
        // Snapshot, two commits, two appended groups.
        assert_eq!(log.groups.len(), 5, "{:?}", log.groups);
        assert!(log.table.blobs.contains_key(&a) && log.table.blobs.contains_key(&b));
        let meta = log.table.blobs[&a].meta.read();
        assert_eq!(
            meta.xattrs.get(&b"after"[..]).map(Vec::as_slice),
            Some(&b"x"[..])
        );
        drop(meta);

        // And the JSON says so.
        let view = View {
            g: &g,
            blob: None,
            is_fs: false,
            extra_errors: RefCell::new(Errors::default()),
        };
        let v: serde_json::Value = serde_json::to_value(&view).unwrap();
        assert_eq!(v["log"]["complete"], false);
        assert_eq!(v["log"]["read_by"], "lenient_replay");
        assert_eq!(v["log"]["groups"].as_array().unwrap().len(), 4);
        assert_eq!(v["log"]["groups"][2]["records"][0]["type"], "delete_blob");
        assert_eq!(v["blobs"].as_array().unwrap().len(), 2);

        // The block walk (used when not even the lenient replay can start) gets as far.
        let mut qp = dev.open_qpair(4).unwrap();
        let mut errors = Errors::default();
        let walked = walk_leniently(qp.as_mut(), dev.as_ref(), &sb, true, &mut errors);
        assert_eq!(walked.groups.len(), 5);
        assert_eq!(walked.mode, "block_walk");
        assert!(
            errors.list.iter().any(|e| e.contains("does not apply")),
            "{:?}",
            errors.list
        );
        assert_eq!(walked.table.blobs.len(), 2);
        assert_eq!(walked.tail.reason, "BadMagic");
    }
}
