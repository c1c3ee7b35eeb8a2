//! `blobfs info`: superblock and usage of a store, as text or JSON.

use crate::device::Target;
use crate::human;
use anyhow::{Context, Result};
use blobfs::inode::{KEY_MARKER, MARKER, ROOT_INO};
use blobstore::{recovery, BlobId, Blobstore, StoreInfo, XattrNs};
use driver::Device;
use serde::Serialize;
use std::io::Write;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image file, block device, file:PATH or mem:SIZE (see below).
    #[arg(value_name = "PATH")]
    pub path: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Everything `info` reports; the JSON form is this struct as is.
#[derive(Debug, Serialize)]
pub struct Report {
    pub device: String,
    pub capacity_bytes: u64,
    /// Hex, 8-4-4-4-12.
    pub uuid: String,
    pub format_version: u32,
    pub generation: u64,
    pub cluster_size: u32,
    pub lba_size: u32,
    pub log_unit: u32,
    pub cluster_count: u64,
    pub used_clusters: u64,
    pub free_clusters: u64,
    /// Free clusters kept back from data for metadata (part of `free_clusters`).
    pub reserved_clusters: u64,
    pub blob_count: u64,
    pub log_segments: u64,
    pub log_bytes: u64,
    pub log_epoch: u64,
    pub checkpoint_count: u64,
    pub read_only: bool,
    /// `blobfs` when the store holds a BlobFS filesystem (a root directory), else `none`.
    pub filesystem: String,
    pub superblock: SuperblockReport,
    pub replay: ReplayReport,
}

#[derive(Debug, Serialize)]
pub struct SuperblockReport {
    /// Which of the two copies (0 or 1) is in force.
    pub active_copy: usize,
    pub compat: u64,
    pub ro_compat: u64,
    pub incompat: u64,
    /// The other copy: its generation, or why it is not usable.
    pub other_copy: String,
}

#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub segments: u64,
    pub blocks: u64,
    pub groups: u64,
    pub records: u64,
    pub bytes_read: u64,
    pub discarded_blocks: u64,
    /// Where the replay stopped: segment (cluster index), offset in it, and why.
    pub tail_segment: u64,
    pub tail_offset: u64,
    pub tail_reason: String,
}

/// Gathers the report of an open store.
pub fn report(store: &Blobstore, dev: &dyn Device) -> Result<Report> {
    let StoreInfo {
        uuid,
        generation,
        cluster_size,
        lba_size,
        log_unit,
        cluster_count,
        used_clusters,
        free_clusters,
        reserved_clusters,
        blob_count,
        log_segments,
        log_bytes,
        log_epoch,
        checkpoint_count,
        read_only,
        replay,
    } = store.info();
    let mut qp = dev
        .open_qpair(4)
        .context("cannot open a queue pair to read the superblocks")?;
    let pair = recovery::read_superblocks(qp.as_mut(), dev)
        .context("cannot read the superblocks again")?;
    let tail = store.tail();
    let is_fs = store
        .open_blob(BlobId(ROOT_INO))
        .ok()
        .and_then(|b| b.get_xattr_ns(XattrNs::Internal, KEY_MARKER))
        .is_some_and(|m| m == MARKER);
    Ok(Report {
        device: dev.describe(),
        capacity_bytes: dev.geometry().capacity(),
        uuid: human::uuid(&uuid),
        format_version: pair.active.version,
        generation,
        cluster_size,
        lba_size,
        log_unit,
        cluster_count,
        used_clusters,
        free_clusters,
        reserved_clusters,
        blob_count,
        log_segments,
        log_bytes,
        log_epoch,
        checkpoint_count,
        read_only,
        filesystem: if is_fs { "blobfs" } else { "none" }.to_string(),
        superblock: SuperblockReport {
            active_copy: pair.slot,
            compat: pair.active.compat,
            ro_compat: pair.active.ro_compat,
            incompat: pair.active.incompat,
            other_copy: match &pair.other {
                Ok(sb) => format!("generation {}", sb.generation),
                // mkfs writes one copy; the other is written by the first checkpoint.
                Err(_) if pair.active.generation == 1 => "not written yet".to_string(),
                Err(e) => format!("not usable: {e}"),
            },
        },
        replay: ReplayReport {
            segments: replay.segments,
            blocks: replay.blocks,
            groups: replay.groups,
            records: replay.records,
            bytes_read: replay.bytes_read,
            discarded_blocks: replay.discarded_blocks,
            tail_segment: tail.seg.0,
            tail_offset: tail.off,
            tail_reason: tail.reason.clone(),
        },
    })
}

/// Lines of the text form that change as the store is used.
const USAGE_LINES: [&str; 5] = ["clusters", "space", "blobs", "metadata log", "checkpoints"];

/// Prints the text form, every line indented by `indent`; only the usage lines unless
/// `full`.
pub fn print_text(r: &Report, indent: &str, full: bool, out: &mut dyn Write) -> Result<()> {
    let cs = u64::from(r.cluster_size);
    let lines = [
        (
            "device",
            format!("{} ({})", r.device, human::bytes(r.capacity_bytes)),
        ),
        ("uuid", r.uuid.clone()),
        (
            "filesystem",
            if r.filesystem == "blobfs" {
                "BlobFS (blob 1 is its root directory)".to_string()
            } else {
                "none: a bare blobstore (`blobfs mkfs` makes a BlobFS filesystem)".to_string()
            },
        ),
        (
            "format",
            format!(
                "version {}, features compat {:#x} ro_compat {:#x} incompat {:#x}",
                r.format_version,
                r.superblock.compat,
                r.superblock.ro_compat,
                r.superblock.incompat
            ),
        ),
        (
            "superblock",
            format!(
                "generation {} in copy {}; other copy: {}",
                r.generation, r.superblock.active_copy, r.superblock.other_copy
            ),
        ),
        ("cluster size", human::bytes(cs)),
        (
            "LBA size",
            format!("{} bytes (log unit {})", r.lba_size, r.log_unit),
        ),
        (
            "clusters",
            format!(
                "{} total, {} used, {} free ({} of them kept for metadata)",
                r.cluster_count, r.used_clusters, r.free_clusters, r.reserved_clusters
            ),
        ),
        (
            "space",
            format!(
                "{} total, {} used, {} free",
                human::bytes(r.cluster_count * cs),
                human::bytes(r.used_clusters * cs),
                human::bytes(r.free_clusters * cs)
            ),
        ),
        ("blobs", r.blob_count.to_string()),
        (
            "metadata log",
            format!(
                "{} segment(s), {} since the last checkpoint, epoch {:#018x}",
                r.log_segments,
                human::bytes(r.log_bytes),
                r.log_epoch
            ),
        ),
        ("checkpoints", r.checkpoint_count.to_string()),
        (
            "replay at open",
            format!(
                "{} segment(s), {} block(s), {} group(s), {} record(s), {} read, \
                 {} incomplete block(s) discarded",
                r.replay.segments,
                r.replay.blocks,
                r.replay.groups,
                r.replay.records,
                human::bytes(r.replay.bytes_read),
                r.replay.discarded_blocks
            ),
        ),
        (
            "log tail",
            format!(
                "cluster {} + {}: {}",
                r.replay.tail_segment, r.replay.tail_offset, r.replay.tail_reason
            ),
        ),
        (
            "read-only",
            if r.read_only { "yes" } else { "no" }.to_string(),
        ),
    ];
    for (k, v) in lines {
        if !full && !USAGE_LINES.contains(&k) {
            continue;
        }
        writeln!(out, "{indent}{:<15} {v}", format!("{k}:"))?;
    }
    Ok(())
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<()> {
    let target = Target::parse(&args.path)?;
    let (dev, store) = target.open_store(true)?;
    let r = report(&store, dev.as_ref())
        .with_context(|| format!("{}: cannot gather the figures", target.describe()))?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &r).context("cannot write JSON")?;
        writeln!(out)?;
    } else {
        print_text(&r, "", true, out)?;
    }
    Ok(())
}
