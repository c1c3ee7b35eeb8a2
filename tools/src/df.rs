//! `blobfs df`: space and inode figures of an unmounted image, like df(1).

use crate::human;
use crate::offline::Locked;
use anyhow::{Context, Result};
use blobfs::inode::{parse_orphan_key, InodeAttr, KEY_INODE, KEY_MARKER, MARKER};
use blobfs::{Kind, ROOT_INO};
use blobstore::check::Sharing;
use blobstore::{BlobId, Blobstore, OpenOptions, XattrNs};
use serde::Serialize;
use std::io::Write;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image file or block device holding a blobstore (BlobFS or bare).
    #[arg(value_name = "IMAGE")]
    pub path: String,
    /// Print one JSON object (all sizes in bytes) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The figures; the JSON form is this struct as is.
#[derive(Debug, Serialize)]
pub struct Report {
    pub image: String,
    pub cluster_size: u64,
    /// Everything the store manages (cluster 0 included).
    pub size_bytes: u64,
    /// Clusters in use: data, metadata log and checkpoint, superblocks.
    pub used_bytes: u64,
    /// Free space data can use: free clusters minus the metadata reserve.
    pub available_bytes: u64,
    /// Free clusters kept for the metadata log and the next checkpoint.
    pub reserved_bytes: u64,
    /// used / (used + available), rounded up, as df(1) does.
    pub use_percent: u64,
    pub clusters: u64,
    pub used_clusters: u64,
    pub free_clusters: u64,
    pub reserved_clusters: u64,
    /// Inodes in use: blobs (for BlobFS, one per file, directory, symlink... plus
    /// orphans).
    pub blobs: u64,
    /// Blob clusters owned by a blob that has children (a snapshot that clones, or the blob
    /// it was taken of, read through): stored once, read by several blobs. Counted as
    /// `blobfs fsck` counts them (`blobstore::check::check_links`).
    pub shared_clusters: u64,
    pub shared_bytes: u64,
    /// Blob clusters owned by a blob without children. Shared plus exclusive are the
    /// clusters blobs hold (used clusters minus the metadata's).
    pub exclusive_clusters: u64,
    pub exclusive_bytes: u64,
    /// `blobfs` or `none` (a bare blobstore).
    pub filesystem: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlinks: Option<u64>,
    /// Device nodes, fifos, sockets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other: Option<u64>,
    /// Unlinked inodes waiting for deletion (a crash left them; the next read-write open
    /// deletes them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orphans: Option<u64>,
}

/// The line `df` and `fsck` both print about shared and exclusive clusters.
pub fn sharing_line(s: &Sharing, cluster_size: u64) -> String {
    format!(
        "Blob clusters: {} shared ({}), {} exclusive ({})",
        s.shared_clusters,
        human::bytes(s.shared_clusters * cluster_size),
        s.exclusive_clusters,
        human::bytes(s.exclusive_clusters * cluster_size)
    )
}

pub fn report(name: &str, store: &Blobstore) -> Report {
    let u = store.usage();
    let sharing = store.cluster_sharing();
    let cs = u.cluster_size;
    let used = u.clusters.saturating_sub(u.free);
    let reserved = u.reserved.min(u.free);
    let avail = u.free - reserved;
    let pct = if used + avail == 0 {
        0
    } else {
        (used * 100).div_ceil(used + avail)
    };
    let mut r = Report {
        image: name.to_string(),
        cluster_size: cs,
        size_bytes: u.clusters * cs,
        used_bytes: used * cs,
        available_bytes: avail * cs,
        reserved_bytes: reserved * cs,
        use_percent: pct,
        clusters: u.clusters,
        used_clusters: used,
        free_clusters: u.free,
        reserved_clusters: reserved,
        blobs: u.blobs,
        shared_clusters: sharing.shared_clusters,
        shared_bytes: sharing.shared_clusters * cs,
        exclusive_clusters: sharing.exclusive_clusters,
        exclusive_bytes: sharing.exclusive_clusters * cs,
        filesystem: "none".into(),
        files: None,
        dirs: None,
        symlinks: None,
        other: None,
        orphans: None,
    };
    let root = store.open_blob(BlobId(ROOT_INO)).ok();
    let is_fs = root
        .as_ref()
        .and_then(|b| b.get_xattr_ns(XattrNs::Internal, KEY_MARKER))
        .is_some_and(|m| m == MARKER);
    if !is_fs {
        return r;
    }
    r.filesystem = "blobfs".into();
    // One inode record per blob: cheap (metadata is in memory). Blobs of snapshots and
    // clones (and frozen copies files read through) carry inode records too, but are not
    // inodes of the live tree.
    let others = blobfs::snapshots::other_trees(&store.export());
    let (mut files, mut dirs, mut links, mut other) = (0, 0, 0, 0);
    for id in store.blob_ids() {
        if others.contains(&id) {
            continue;
        }
        let Ok(b) = store.open_blob(id) else { continue };
        let kind = b
            .get_xattr_ns(XattrNs::Internal, KEY_INODE)
            .and_then(|raw| InodeAttr::decode(&raw).ok())
            .map(|a| a.kind());
        match kind {
            Some(Kind::File) => files += 1,
            Some(Kind::Dir) => dirs += 1,
            Some(Kind::Symlink) => links += 1,
            Some(_) => other += 1,
            None => {}
        }
    }
    let orphans = root
        .map(|b| {
            b.xattr_names_ns(XattrNs::Internal)
                .iter()
                .filter(|k| parse_orphan_key(k).is_some())
                .count() as u64
        })
        .unwrap_or(0);
    r.files = Some(files);
    r.dirs = Some(dirs);
    r.symlinks = Some(links);
    r.other = Some(other);
    r.orphans = Some(orphans);
    r
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<()> {
    let img = Locked::new(&args.path, false)?;
    let name = img.name();
    let dev = img.target.open_store_device(true)?;
    let store = Blobstore::open(
        dev,
        OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )
    .with_context(|| format!("{name}: cannot open the blobstore"))?;
    let r = report(&name, &store);
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &r).context("cannot write JSON")?;
        writeln!(out)?;
        return Ok(());
    }
    let rows = [
        [
            "Image".to_string(),
            "Size".into(),
            "Used".into(),
            "Avail".into(),
            "Use%".into(),
            "Inodes".into(),
        ],
        [
            r.image.clone(),
            human::bytes(r.size_bytes),
            human::bytes(r.used_bytes),
            human::bytes(r.available_bytes),
            format!("{}%", r.use_percent),
            r.blobs.to_string(),
        ],
    ];
    let width = |i: usize| rows.iter().map(|row| row[i].len()).max().unwrap_or(0);
    for row in &rows {
        let mut line = format!("{:<w$}", row[0], w = width(0));
        for (i, cell) in row.iter().enumerate().skip(1) {
            line.push_str(&format!("  {:>w$}", cell, w = width(i)));
        }
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "{} kept free for metadata (not counted as available); {} clusters of {}",
        human::bytes(r.reserved_bytes),
        r.clusters,
        human::bytes(r.cluster_size)
    )?;
    let sharing = Sharing {
        shared_clusters: r.shared_clusters,
        exclusive_clusters: r.exclusive_clusters,
        ..Sharing::default()
    };
    writeln!(out, "{}", sharing_line(&sharing, r.cluster_size))?;
    match (r.files, r.dirs, r.symlinks, r.other, r.orphans) {
        (Some(f), Some(d), Some(l), Some(o), Some(orph)) => writeln!(
            out,
            "BlobFS: {f} files, {d} directories, {l} symlinks, {o} other, {orph} orphans"
        )?,
        _ => writeln!(out, "no filesystem: a bare blobstore")?,
    }
    Ok(())
}
