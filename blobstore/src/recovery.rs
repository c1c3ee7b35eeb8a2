//! Loading: pick the superblock, replay the log from its snapshot to the first block that
//! does not continue the chain, rebuild the allocation bitmap from what the blobs and the
//! log own.
//!
//! The cost is the length of the log since the last checkpoint (plus one bit per cluster of
//! memory), never a scan of the device.
//!
//! Checked groups (block flag `FLAG_CHECKED`) were written without a data pre-flush. If the
//! last complete group of the log is checked, its `DataCheck` records are verified against
//! the device once the log ends (reading only the checked bytes); if one fails, the group
//! was never acknowledged and is rolled back as if torn: the log continues where it began.
//! A checked group followed by another complete group is never verified (its flush
//! completed before the next group was written, and its bytes may have changed since).

use crate::alloc::Allocator;
use crate::error::{corrupt, Error, Result};
use crate::format::block::{
    chain_seed, check_jump, decode_block, BlockHeader, NotABlock, BLOCK_HEADER, KIND_JUMP,
};
use crate::format::record::{data_crc_append, Record};
use crate::format::superblock::{Superblock, SB_SIZE};
use crate::journal::Journal;
use crate::meta::{Effects, Table, Undo};
use crate::units::{BlobId, ClusterIdx};
use driver::{run_one, Device, DmaBuf, Lba, Op, QueuePair};
use std::collections::HashSet;

/// Both superblock copies as found.
#[derive(Debug)]
pub struct SuperblockPair {
    /// The copy in use: the valid one with the higher generation.
    pub active: Superblock,
    /// Which page it came from (0 or 1).
    pub slot: usize,
    /// What was wrong with the other copy, if anything.
    pub other: std::result::Result<Superblock, String>,
}

/// Reads `len` bytes at byte offset `off` (both multiples of the LBA size).
pub(crate) fn read_bytes(
    qp: &mut dyn QueuePair,
    dev: &dyn Device,
    off: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let lba = u64::from(dev.geometry().lba_size);
    let max = dev.geometry().max_transfer as usize;
    let mut out = Vec::with_capacity(len);
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(max);
        let buf = dev.alloc_buf(n);
        let buf = run_one(
            qp,
            Op::Read {
                lba: Lba((off + done as u64) / lba),
                buf,
            },
        )?
        .unwrap_or_else(|| DmaBuf::zeroed(0));
        out.extend_from_slice(buf.as_slice());
        done += n;
    }
    Ok(out)
}

/// Reads and chooses a superblock.
pub fn read_superblocks(qp: &mut dyn QueuePair, dev: &dyn Device) -> Result<SuperblockPair> {
    let geom = dev.geometry();
    if geom.capacity() < 2 * SB_SIZE as u64 {
        return Err(Error::NotABlobstore(format!(
            "device of {} bytes is too small",
            geom.capacity()
        )));
    }
    let raw = read_bytes(qp, dev, 0, 2 * SB_SIZE)?;
    // Choose by generation among copies whose CRC holds, before validating the fields, so
    // that a newer copy this build cannot read (unknown incompat feature, newer version) is
    // refused rather than silently losing to an older copy.
    let copies = [
        Superblock::decode_unchecked(&raw[..SB_SIZE]),
        Superblock::decode_unchecked(&raw[SB_SIZE..]),
    ];
    let pick = match (&copies[0], &copies[1]) {
        (Ok(a), Ok(b)) => {
            if b.generation > a.generation {
                1
            } else {
                0
            }
        }
        (Ok(_), Err(_)) => 0,
        (Err(_), Ok(_)) => 1,
        (Err(a), Err(b)) => {
            // Report the most telling failure: damage over absence.
            let pick_err = |e: &Error| match e {
                Error::NotABlobstore(_) => 0,
                Error::Unsupported(_) => 2,
                _ => 1,
            };
            let e = if pick_err(b) > pick_err(a) { b } else { a };
            return Err(match e {
                Error::NotABlobstore(_) => {
                    Error::NotABlobstore(format!("no superblock found on {}", dev.describe()))
                }
                Error::Unsupported(m) => Error::Unsupported(m.clone()),
                other => corrupt(format!("both superblock copies are bad; first: {other}")),
            });
        }
    };
    let [c0, c1] = copies;
    let (active, other) = if pick == 0 { (c0, c1) } else { (c1, c0) };
    let active = active?;
    active.validate()?;
    let other = other.and_then(|o| o.validate().map(|()| o));
    Ok(SuperblockPair {
        active,
        slot: pick,
        other: other.map_err(|e| e.to_string()),
    })
}

/// Checks that the device can hold the store the superblock describes.
pub fn check_device(sb: &Superblock, dev: &dyn Device) -> Result<()> {
    let geom = dev.geometry();
    let need = sb.cluster_count.saturating_mul(u64::from(sb.cluster_size));
    if geom.capacity() < need {
        return Err(Error::Invalid(format!(
            "device {} holds {} bytes but the store needs {need} (truncated image?)",
            dev.describe(),
            geom.capacity()
        )));
    }
    if geom.lba_size > sb.log_unit || !sb.log_unit.is_multiple_of(geom.lba_size) {
        return Err(Error::Invalid(format!(
            "device LBA size {} does not divide the store's log unit {}",
            geom.lba_size, sb.log_unit
        )));
    }
    Ok(())
}

/// Counters of one replay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub segments: u64,
    pub blocks: u64,
    pub groups: u64,
    pub records: u64,
    pub bytes_read: u64,
    /// Blocks of an incomplete group at the tail that were discarded (and of a checked
    /// last group whose data checks failed).
    pub discarded_blocks: u64,
    /// 1 if the last group was checked and its data checks failed, so it was discarded.
    pub discarded_checked_groups: u64,
    /// Bytes read from the device to verify the last group's data checks.
    pub check_bytes_read: u64,
}

/// Why replay stopped where it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailInfo {
    pub seg: ClusterIdx,
    pub off: u64,
    pub reason: String,
}

/// The result of a replay: the state as of the last complete group.
#[derive(Debug)]
pub struct Replayed {
    pub sb: Superblock,
    pub table: Table,
    pub alloc: Allocator,
    /// Where the next group goes.
    pub journal: Journal,
    pub stats: ReplayStats,
    pub tail: TailInfo,
    /// Every group as decoded, when asked for (for dump tools).
    pub groups: Option<Vec<Vec<Record>>>,
    /// Lenient replay only: cluster references beyond the first owner of a cluster
    /// (blob, index in the blob, cluster), in the order met.
    pub duplicates: Vec<(crate::units::BlobId, u64, ClusterIdx)>,
}

/// Something a lenient replay (fsck) found wrong. `kind` is a stable identifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: &'static str,
    pub detail: String,
    /// Whether a repair can fix it without guessing (fsck -y).
    pub repairable: bool,
    /// Normal after a crash (not an error): e.g. the superblock copy that was being written
    /// when the power failed.
    pub note: bool,
}

impl Finding {
    pub fn new(kind: &'static str, detail: impl Into<String>, repairable: bool) -> Finding {
        Finding {
            kind,
            detail: detail.into(),
            repairable,
            note: false,
        }
    }

    /// A finding that is normal after a crash.
    pub fn note(kind: &'static str, detail: impl Into<String>) -> Finding {
        Finding {
            kind,
            detail: detail.into(),
            repairable: true,
            note: true,
        }
    }
}

/// Position and chain state at a group boundary.
#[derive(Clone, Copy, Debug)]
struct Mark {
    nsegs: usize,
    seg: ClusterIdx,
    off: u64,
    seq: u64,
    prev: u32,
    bytes: u64,
}

/// Replays the log `sb` points at. Any impossible content is an error.
pub fn replay(
    qp: &mut dyn QueuePair,
    dev: &dyn Device,
    sb: &Superblock,
    keep_groups: bool,
) -> Result<Replayed> {
    replay_inner(qp, dev, sb, keep_groups, None)
}

/// Replays as far as possible for fsck: records that do not apply are skipped, damaged
/// groups and jumps end or skip what they must, unknown blob flags are masked, and a
/// cluster referenced twice stays with both (listed in `duplicates`); each is reported in
/// `findings`. Only a missing or damaged checkpoint (no base state) is an error.
pub fn replay_lenient(
    qp: &mut dyn QueuePair,
    dev: &dyn Device,
    sb: &Superblock,
    keep_groups: bool,
    findings: &mut Vec<Finding>,
) -> Result<Replayed> {
    replay_inner(qp, dev, sb, keep_groups, Some(findings))
}

fn replay_inner(
    qp: &mut dyn QueuePair,
    dev: &dyn Device,
    sb: &Superblock,
    keep_groups: bool,
    mut lenient: Option<&mut Vec<Finding>>,
) -> Result<Replayed> {
    check_device(sb, dev)?;
    let seg_size = u64::from(sb.cluster_size);
    let unit = u64::from(sb.log_unit);
    let mut stats = ReplayStats::default();
    let mut table = Table::new(sb.cluster_count, seg_size);
    let mut alloc = Allocator::new(sb.cluster_count);
    let mut groups = keep_groups.then(Vec::new);

    let mut seg = ClusterIdx(sb.log_start);
    let mut segments = vec![seg];
    let mut visited: HashSet<u64> = HashSet::from([seg.0]);
    let mut buf = read_bytes(qp, dev, seg.0 * seg_size, seg_size as usize)?;
    stats.segments += 1;
    stats.bytes_read += seg_size;
    let mut off = 0u64;
    let mut seq = sb.log_start_seq;
    let mut prev = chain_seed(sb.log_epoch);
    let mut bytes = 0u64;
    let mut payload: Vec<u8> = Vec::new();
    let mut group_blocks = 0u64;
    let mut group_checked = false;
    let mut mark: Option<Mark> = None;
    let mut snapshot_bytes = 0u64;
    // The last complete group, if it is checked: what it takes to verify and undo it.
    let mut unverified: Option<CheckedGroup> = None;

    let reason = loop {
        let (h, p, crc) = match decode_block(&buf[off as usize..], sb.log_epoch, seq, prev) {
            Ok(x) => x,
            Err(why) => break format!("{why:?}"),
        };
        stats.blocks += 1;
        group_blocks += 1;
        seq += 1;
        prev = crc;
        let padded = BlockHeader::padded_len(p.len(), unit as usize) as u64;
        bytes += padded;
        if h.kind == KIND_JUMP {
            let bad = match check_jump(h.jump_to, sb.cluster_count) {
                Err(e) => Some(e.to_string()),
                Ok(()) if visited.contains(&h.jump_to) => {
                    Some(format!("log jumps back to segment {} (cycle)", h.jump_to))
                }
                Ok(()) => None,
            };
            if let Some(why) = bad {
                match lenient.as_deref_mut() {
                    Some(f) => {
                        f.push(Finding::new(
                            "log-damaged",
                            format!("{why}: the log ends there"),
                            true,
                        ));
                        break why;
                    }
                    None => return Err(corrupt(why)),
                }
            }
            visited.insert(h.jump_to);
            seg = ClusterIdx(h.jump_to);
            segments.push(seg);
            buf = read_bytes(qp, dev, seg.0 * seg_size, seg_size as usize)?;
            stats.segments += 1;
            stats.bytes_read += seg_size;
            off = 0;
            continue;
        }
        off += padded;
        payload.extend_from_slice(p);
        group_checked |= h.checked();
        if h.continues() {
            continue;
        }
        // A complete group: decode and apply it whole. The group before it is confirmed
        // (its flush completed before this one was written): it is never verified.
        unverified = None;
        let first_group = mark.is_none();
        // A snapshot is never checked (the writer flushes before it).
        let checked = group_checked && !first_group;
        let mut undo = checked.then(Vec::new);
        let findings_before = lenient.as_deref().map_or(0, |f| f.len());
        let records = match Record::decode_all(&payload) {
            Ok(r) => r,
            Err(e) => {
                let why = format!("log group ending at block {}: {e}", seq - 1);
                match lenient.as_deref_mut() {
                    Some(f) if !first_group => {
                        f.push(Finding::new(
                            "log-damaged",
                            format!("{why} (group skipped)"),
                            true,
                        ));
                        Vec::new()
                    }
                    _ => return Err(corrupt(why)),
                }
            }
        };
        match lenient.as_deref_mut() {
            None => apply_group(&mut table, &mut alloc, &records, first_group, undo.as_mut())
                .map_err(|e| corrupt(format!("log group ending at block {}: {e}", seq - 1)))?,
            Some(f) => {
                apply_group_lenient(&mut table, &records, first_group, seq - 1, f, undo.as_mut())?
            }
        }
        if let (Some(undo), Some(before)) = (undo, mark) {
            unverified = Some(CheckedGroup {
                before,
                undo,
                checks: records
                    .iter()
                    .filter_map(|r| match r {
                        Record::DataCheck {
                            id,
                            offset,
                            len,
                            crc,
                        } => Some((*id, *offset, *len, *crc)),
                        _ => None,
                    })
                    .collect(),
                records: records.len() as u64,
                blocks: group_blocks,
                findings_before,
                last_block: seq - 1,
            });
        }
        stats.groups += 1;
        stats.records += records.len() as u64;
        if first_group {
            snapshot_bytes = bytes;
        }
        if let Some(g) = groups.as_mut() {
            g.push(records);
        }
        payload.clear();
        group_blocks = 0;
        group_checked = false;
        mark = Some(Mark {
            nsegs: segments.len(),
            seg,
            off,
            seq,
            prev,
            bytes,
        });
        if off + unit > seg_size {
            // A well-formed writer never fills the reserved last unit.
            let why = format!("log block overruns segment {}", seg.0);
            match lenient.as_deref_mut() {
                Some(f) => {
                    f.push(Finding::new(
                        "log-damaged",
                        format!("{why}: the log ends there"),
                        true,
                    ));
                    break why;
                }
                None => return Err(corrupt(why)),
            }
        }
    };
    stats.discarded_blocks = group_blocks;
    let mut tail = TailInfo {
        seg,
        off,
        reason: if reason == format!("{:?}", NotABlock::BadMagic) && group_blocks == 0 {
            "end of log".into()
        } else {
            reason
        },
    };
    // The last complete group is checked: its flush may not have completed. Verify the data
    // it depends on (with the state after it, which is the table now); if any check fails it
    // was never acknowledged: roll it back, and let new groups overwrite it.
    if let Some(cg) = unverified.take() {
        if let Some(why) = verify_checks(qp, dev, &table, seg_size, &cg.checks, &mut stats)? {
            for (u, claimed, released) in cg.undo.into_iter().rev() {
                table.undo(u);
                for c in claimed {
                    alloc.release(c);
                }
                for c in released {
                    alloc.claim(c);
                }
            }
            stats.groups -= 1;
            stats.records -= cg.records;
            stats.discarded_blocks += cg.blocks;
            stats.discarded_checked_groups += 1;
            if let Some(g) = groups.as_mut() {
                g.pop();
            }
            if let Some(f) = lenient.as_deref_mut() {
                f.truncate(cg.findings_before);
            }
            tail = TailInfo {
                seg: cg.before.seg,
                off: cg.before.off,
                reason: format!(
                    "last group's data checks failed: discarded (group ending at block {}: {why}; \
                     then: {})",
                    cg.last_block, tail.reason
                ),
            };
            mark = Some(cg.before);
        }
    }
    let Some(m) = mark else {
        return Err(corrupt(format!(
            "log at cluster {} has no complete checkpoint ({})",
            sb.log_start, tail.reason
        )));
    };
    // Segments reached only by the discarded tail are not part of the log.
    segments.truncate(m.nsegs);
    let mut duplicates = Vec::new();
    match lenient {
        None => {
            for s in &segments {
                if !alloc.claim(*s) {
                    return Err(corrupt(format!(
                        "log segment {} is also owned by a blob or repeated",
                        s.0
                    )));
                }
            }
        }
        Some(f) => {
            // Ownership from the final state: the log first, then blobs in id order; every
            // later claim of a taken cluster is a duplicate.
            alloc = Allocator::new(sb.cluster_count);
            for s in &segments {
                alloc.claim(*s);
            }
            for (id, e) in &table.blobs {
                let m = e.meta.read();
                for (i, c) in m.clusters.iter().enumerate() {
                    if c.is_some() && !alloc.claim(*c) {
                        let what = if segments.contains(c) {
                            "the metadata log"
                        } else {
                            "another blob"
                        };
                        f.push(Finding::new(
                            "cluster-owned-twice",
                            format!("{c} at index {i} of blob {id} is also used by {what}"),
                            true,
                        ));
                        duplicates.push((*id, i as u64, *c));
                    }
                }
            }
            if let Some(w) = damage_after_tail(&buf, off, sb.log_epoch, seq, unit) {
                f.push(Finding::new("log-damaged", w, true));
            }
        }
    }
    let journal = Journal {
        epoch: sb.log_epoch,
        seq: m.seq,
        prev_crc: m.prev,
        seg: m.seg,
        off: m.off,
        segments,
        bytes: m.bytes,
        snapshot_bytes,
        unit,
        seg_size,
    };
    Ok(Replayed {
        sb: sb.clone(),
        table,
        alloc,
        journal,
        stats,
        tail,
        groups,
        duplicates,
    })
}

/// How to reverse one record of a checked group: the table undo, then the clusters it
/// claimed and released in the allocator (strict replay only).
type GroupUndo = (Undo, Vec<ClusterIdx>, Vec<ClusterIdx>);

/// A checked group that is (so far) the last complete group of the log.
struct CheckedGroup {
    /// The log position and chain state before it.
    before: Mark,
    undo: Vec<GroupUndo>,
    /// Its `DataCheck`s: blob, offset, length, CRC32C.
    checks: Vec<(BlobId, u64, u64, u32)>,
    records: u64,
    blocks: u64,
    /// Lenient replay: findings before the group (its own go if it is discarded).
    findings_before: usize,
    last_block: u64,
}

/// Verifies data checks against the device, mapping blob offsets through `table`'s cluster
/// maps (unallocated clusters read as zeroes). Returns why the first failing check fails,
/// or `None` if all hold. Reads only the checked bytes (rounded out to LBAs), in pieces of
/// at most 1 MiB; an I/O error is an error, not a failed check.
fn verify_checks(
    qp: &mut dyn QueuePair,
    dev: &dyn Device,
    table: &Table,
    cluster_size: u64,
    checks: &[(BlobId, u64, u64, u32)],
    stats: &mut ReplayStats,
) -> Result<Option<String>> {
    const PIECE: u64 = 1 << 20;
    static ZEROES: [u8; 4096] = [0; 4096];
    let lba = u64::from(dev.geometry().lba_size).max(1);
    for &(id, offset, len, want) in checks {
        let Some(e) = table.blobs.get(&id) else {
            return Ok(Some(format!("blob {id} does not exist")));
        };
        let map = e.meta.read().clusters.clone();
        let size = (map.len() as u64).saturating_mul(cluster_size);
        let Some(end) = offset.checked_add(len).filter(|&end| end <= size) else {
            return Ok(Some(format!(
                "blob {id}: {len} bytes at {offset} beyond its size {size}"
            )));
        };
        let mut crc = 0u32;
        let mut pos = offset;
        while pos < end {
            let within = pos % cluster_size;
            let n = (cluster_size - within).min(end - pos).min(PIECE);
            // A clone's unallocated cluster reads its ancestors' (as a read would).
            let cluster = e.resolve(pos / cluster_size).unwrap_or(ClusterIdx::NONE);
            if cluster.is_some() {
                let start = cluster.0 * cluster_size + within;
                let a0 = start / lba * lba;
                let a1 = (start + n).div_ceil(lba) * lba;
                let bytes = read_bytes(qp, dev, a0, (a1 - a0) as usize)?;
                stats.check_bytes_read += a1 - a0;
                let from = (start - a0) as usize;
                crc = data_crc_append(crc, &bytes[from..from + n as usize]);
            } else {
                let mut left = n as usize;
                while left > 0 {
                    let k = left.min(ZEROES.len());
                    crc = data_crc_append(crc, &ZEROES[..k]);
                    left -= k;
                }
            }
            pos += n;
        }
        if crc != want {
            return Ok(Some(format!(
                "blob {id}: bytes {offset}..{end} have CRC32C {crc:#010x}, the group says {want:#010x}"
            )));
        }
    }
    Ok(None)
}

/// Looks past the end of the log for committed groups cut off by damage: a block of this
/// epoch ending a group, followed by its valid successor. A torn last commit never has
/// one (nothing is written after an unacknowledged commit), so this means lost commits.
fn damage_after_tail(
    buf: &[u8],
    tail: u64,
    epoch: u64,
    tail_seq: u64,
    unit: u64,
) -> Option<String> {
    let mut off = tail + unit;
    while off + (BLOCK_HEADER as u64) <= buf.len() as u64 {
        let b = &buf[off as usize..];
        if b[0..4] == crate::format::block::BLOCK_MAGIC {
            let seq = crate::format::codec::le64(b, 16);
            let prev = crate::format::codec::le32(b, 24);
            if seq > tail_seq && seq < tail_seq + (1 << 32) {
                if let Ok((h, p, crc)) = decode_block(b, epoch, seq, prev) {
                    if !h.continues() {
                        let next = off + BlockHeader::padded_len(p.len(), unit as usize) as u64;
                        if let Some(nb) = buf.get(next as usize..) {
                            if decode_block(nb, epoch, seq + 1, crc).is_ok() {
                                return Some(format!(
                                    "the log breaks off at byte {tail} of its last segment, \
                                     but committed blocks follow (sequence {seq} at byte {off}): \
                                     changes after the damage are lost"
                                ));
                            }
                        }
                    }
                }
            }
        }
        off += unit;
    }
    None
}

/// `apply_group` for fsck: applies what it can and reports the rest.
fn apply_group_lenient(
    table: &mut Table,
    records: &[Record],
    first_group: bool,
    block: u64,
    f: &mut Vec<Finding>,
    mut undo: Option<&mut Vec<GroupUndo>>,
) -> Result<()> {
    let body = if first_group {
        match (records.first(), records.last()) {
            (
                Some(Record::SnapshotBegin {
                    next_blob_id,
                    blob_count,
                }),
                Some(Record::SnapshotEnd { blob_count: end }),
            ) if records.len() >= 2 => {
                if blob_count != end {
                    f.push(Finding::new(
                        "checkpoint-damaged",
                        "snapshot blob counts disagree",
                        true,
                    ));
                }
                table.next_blob_id = (*next_blob_id).clamp(1, crate::meta::MAX_BLOB_ID);
                &records[1..records.len() - 1]
            }
            _ => return Err(corrupt("log does not start with a complete snapshot")),
        }
    } else {
        records
    };
    for r in body {
        let mut r = r.clone();
        if let Record::CreateBlob { id, flags } | Record::SetFlags { id, flags } = &mut r {
            let unknown = *flags & !crate::meta::KNOWN_FLAGS;
            if unknown != 0 {
                f.push(Finding::new(
                    "unknown-flags",
                    format!("blob {id} has unknown flags {unknown:#x} (cleared by a repair)"),
                    true,
                ));
                *flags &= crate::meta::KNOWN_FLAGS;
            }
        }
        let mut fx = Effects::default();
        match table.apply(&r, &mut fx) {
            // Ownership is rebuilt from the final state here: only the table needs undoing.
            Ok(u) => {
                if let Some(list) = undo.as_deref_mut() {
                    list.push((u, Vec::new(), Vec::new()));
                }
            }
            Err(e) => f.push(Finding::new(
                "invalid-record",
                format!("group ending at block {block}: {r:?}: {e} (skipped)"),
                true,
            )),
        }
    }
    if first_group {
        let max = table.blobs.keys().map(|id| id.0).max().unwrap_or(0);
        if table.next_blob_id <= max {
            f.push(Finding::new(
                "checkpoint-damaged",
                format!(
                    "next blob id {} is not above blob {max}",
                    table.next_blob_id
                ),
                true,
            ));
            table.next_blob_id = max + 1;
        }
    }
    Ok(())
}

/// Applies one decoded group during replay, checking snapshot framing and cluster
/// ownership.
fn apply_group(
    table: &mut Table,
    alloc: &mut Allocator,
    records: &[Record],
    first_group: bool,
    mut undo: Option<&mut Vec<GroupUndo>>,
) -> Result<()> {
    let body = if first_group {
        match (records.first(), records.last()) {
            (
                Some(Record::SnapshotBegin {
                    next_blob_id,
                    blob_count,
                }),
                Some(Record::SnapshotEnd { blob_count: end }),
            ) if records.len() >= 2 => {
                if blob_count != end {
                    return Err(corrupt("snapshot blob counts disagree"));
                }
                if *next_blob_id == 0 || *next_blob_id > crate::meta::MAX_BLOB_ID {
                    return Err(corrupt(format!("snapshot's next blob id {next_blob_id}")));
                }
                table.next_blob_id = *next_blob_id;
                &records[1..records.len() - 1]
            }
            _ => return Err(corrupt("log does not start with a complete snapshot")),
        }
    } else {
        records
    };
    for r in body {
        let mut fx = Effects::default();
        let u = table.apply(r, &mut fx)?;
        let mut released = Vec::new();
        for c in fx.freed {
            if alloc.release(c) {
                released.push(c);
            }
        }
        for c in &fx.mapped {
            if !alloc.claim(*c) {
                return Err(corrupt(format!("{c} is owned twice")));
            }
        }
        if let Some(list) = undo.as_deref_mut() {
            list.push((u, fx.mapped, released));
        }
    }
    if first_group {
        if let Some(Record::SnapshotEnd { blob_count }) = records.last() {
            if table.blobs.len() as u64 != *blob_count {
                return Err(corrupt(format!(
                    "snapshot declares {blob_count} blobs, holds {}",
                    table.blobs.len()
                )));
            }
            if table.blobs.keys().any(|id| id.0 >= table.next_blob_id) {
                return Err(corrupt("snapshot's next blob id is below an existing id"));
            }
        }
    }
    Ok(())
}
