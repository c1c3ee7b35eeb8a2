//! `blobfs demo`: a walk through the blob API on an existing store.

use crate::device::{self, Target, LOCK_WAIT};
use crate::human;
use crate::info;
use anyhow::{bail, Context, Result};
use blobstore::{Blob, BlobId, BlobOptions, Blobstore, FormatOptions, IoChannel};
use driver::Device;
use std::io::Write;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image file, block device, file:PATH or mem:SIZE (see below).
    #[arg(value_name = "PATH")]
    pub path: String,
}

/// Size of the demo blob in clusters.
const BLOB_CLUSTERS: u64 = 4;
/// Clusters written (the others stay holes).
const WRITTEN: [u64; 3] = [0, 1, 3];
/// Bytes written at the start of each written cluster at most (all of it for clusters up
/// to this size), in chunks of at most `CHUNK`.
const MAX_PER_CLUSTER: u64 = 8 << 20;
const CHUNK: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// Xattrs set on the demo blob.
const XATTRS: [(&str, &str); 2] = [
    ("name", "blobfs-demo"),
    ("pattern", "a text line per 4 KiB page"),
];

/// The pattern of one 4 KiB page: a text line naming the blob, cluster and page, repeated.
fn page_pattern(id: BlobId, cluster: u64, page: u64) -> Vec<u8> {
    let line = format!("blobfs demo: blob {id} cluster {cluster} page {page:<6}\n");
    line.bytes().cycle().take(PAGE as usize).collect()
}

/// `len` bytes of the pattern from byte `off` of `cluster` (both multiples of a page).
fn pattern(id: BlobId, cluster: u64, off: u64, len: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len as usize);
    for p in 0..len / PAGE {
        v.extend_from_slice(&page_pattern(id, cluster, off / PAGE + p));
    }
    v
}

fn step(out: &mut dyn Write, n: &mut u32, what: &str) -> Result<()> {
    *n += 1;
    writeln!(out, "\n[{n}] {what}")?;
    Ok(())
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<()> {
    let target = Target::parse(&args.path)?;
    let name = target.describe();
    let mut n = 0;
    writeln!(out, "blobfs demo on {name}")?;
    writeln!(
        out,
        "(the demo blob is deleted at the end, so the store is left as it was found)"
    )?;

    step(out, &mut n, "open the store")?;
    // Not while the store is mounted (or used by another command).
    let _lock = target.lock(true, LOCK_WAIT)?;
    let (dev, store) = if target.is_mem() {
        let dev = target.open_device(None, false)?;
        writeln!(
            out,
            "    {name} is an empty in-memory device: formatting it first"
        )?;
        Blobstore::format(Arc::clone(&dev), &FormatOptions::default())
            .with_context(|| format!("{name}: cannot format"))?;
        let store = device::open_store_on(&target, &dev, false)?;
        (dev, store)
    } else {
        target.open_store(false)?
    };
    if store.is_read_only() {
        bail!("{name}: the store is read-only; the demo needs to write");
    }
    let i = store.info();
    writeln!(
        out,
        "    opened: {} clusters of {}, {} blob(s), I/O unit {} bytes",
        i.cluster_count,
        human::bytes(store.cluster_size()),
        i.blob_count,
        store.io_unit()
    )?;
    writeln!(out, "    store before the demo:")?;
    let before = info::report(&store, dev.as_ref())?;
    info::print_text(&before, "      ", true, out)?;
    if before.filesystem == "blobfs" {
        writeln!(
            out,
            "    the store holds a BlobFS filesystem: the demo works beside it, on a blob of \
             its own that no directory names, and deletes it again"
        )?;
    }

    step(
        out,
        &mut n,
        &format!("create a thin blob of {BLOB_CLUSTERS} clusters"),
    )?;
    let id = store
        .create_blob(BlobOptions {
            thin: true,
            clusters: BLOB_CLUSTERS,
            xattrs: Vec::new(),
        })
        .context("cannot create the demo blob")?;

    if let Err(e) = exercise(&target, &dev, &store, id, &mut n, out) {
        // Do not leave the demo blob behind (all its handles are closed by now).
        if store.delete_blob(id).and_then(|()| store.sync()).is_ok() {
            let _ = writeln!(out, "    (failed: demo blob {id} deleted again)");
        }
        let _ = store.close();
        return Err(e);
    }

    step(out, &mut n, &format!("delete blob {id} and sync"))?;
    store
        .delete_blob(id)
        .with_context(|| format!("deleting blob {id}"))?;
    store.sync().context("sync failed")?;
    let i = store.info();
    writeln!(
        out,
        "    deleted; {} blob(s) left, {} clusters used, {} free",
        i.blob_count, i.used_clusters, i.free_clusters
    )?;

    step(out, &mut n, "close the store")?;
    store.close().context("closing the store")?;
    // What the next user of the device will find.
    let after = device::open_store_on(&target, &dev, true)?.info();
    writeln!(
        out,
        "    closed cleanly: {} checkpoint(s) so far; the next open replays {} record(s) in {} group(s)",
        after.checkpoint_count, after.replay.records, after.replay.groups
    )?;
    if target.is_mem() {
        writeln!(out, "    ({name} is in memory: it is gone now)")?;
    }
    writeln!(out, "\ndemo finished: all data and xattrs verified")?;
    Ok(())
}

/// The steps between creating the demo blob and deleting it.
fn exercise(
    target: &Target,
    dev: &Arc<dyn Device>,
    store: &Blobstore,
    id: BlobId,
    n: &mut u32,
    out: &mut dyn Write,
) -> Result<()> {
    let cs = store.cluster_size();
    let blob = store
        .open_blob(id)
        .with_context(|| format!("cannot open blob {id}"))?;
    writeln!(
        out,
        "    blob {id}: {} ({} clusters), {} allocated: a thin blob gets clusters on first write",
        human::bytes(blob.size()),
        blob.num_clusters(),
        blob.allocated_clusters()
    )?;

    let per = cs.min(MAX_PER_CLUSTER);
    let chunk = per.min(CHUNK);
    step(
        out,
        n,
        &format!(
            "write clusters {WRITTEN:?} with a recognisable pattern ({} each; cluster 2 stays a hole)",
            human::bytes(per)
        ),
    )?;
    let mut ch = store.channel().context("cannot open an I/O channel")?;
    for &c in &WRITTEN {
        let mut off = 0;
        while off < per {
            let data = pattern(id, c, off, chunk);
            blob.write(&mut ch, c * cs + off, &data)
                .with_context(|| format!("writing cluster {c} of blob {id} at offset {off}"))?;
            off += chunk;
        }
    }
    let first = page_pattern(id, 0, 0);
    let line = first.split(|&b| b == b'\n').next().unwrap_or(&[]);
    writeln!(
        out,
        "    wrote {} in {} writes; each 4 KiB page repeats a line like {:?}",
        human::bytes(per * WRITTEN.len() as u64),
        human::bytes(chunk),
        String::from_utf8_lossy(line).trim_end()
    )?;
    writeln!(
        out,
        "    blob {id}: {} of {} clusters allocated",
        blob.allocated_clusters(),
        blob.num_clusters()
    )?;

    step(out, n, "set xattrs")?;
    for (k, v) in XATTRS {
        blob.set_xattr(k.as_bytes(), v.as_bytes())
            .with_context(|| format!("setting xattr {k:?} on blob {id}"))?;
        writeln!(out, "    {k} = {v:?}")?;
    }

    step(
        out,
        n,
        "sync: flush the data, then commit the metadata to the log and flush",
    )?;
    blob.sync().context("sync failed")?;
    writeln!(
        out,
        "    durable; metadata log now {} since the last checkpoint",
        human::bytes(store.info().log_bytes)
    )?;
    drop(ch);
    drop(blob);

    step(
        out,
        n,
        "open a second, read-only view of the device (replays the log) and verify through it",
    )?;
    let view = device::open_store_on(target, dev, true)?;
    let r = view.info().replay;
    writeln!(
        out,
        "    replayed {} record(s) in {} group(s) from {} log segment(s), {} read",
        r.records,
        r.groups,
        r.segments,
        human::bytes(r.bytes_read)
    )?;
    let blob = view
        .open_blob(id)
        .with_context(|| format!("blob {id} is not in the replayed metadata"))?;
    let mut ch = view.channel().context("cannot open an I/O channel")?;
    verify(&blob, &mut ch, id, cs, per, chunk, out)?;
    for (k, v) in XATTRS {
        let got = blob.get_xattr(k.as_bytes());
        if got.as_deref() != Some(v.as_bytes()) {
            bail!("verification failed: xattr {k:?} of blob {id} is {got:?}, expected {v:?}");
        }
    }
    writeln!(out, "    xattrs: as set")?;
    drop(ch);
    drop(blob);
    drop(view);

    step(out, n, "list the blobs")?;
    list(store, out)?;

    step(out, n, "store after writing (usage)")?;
    info::print_text(&info::report(store, dev.as_ref())?, "      ", false, out)?;
    Ok(())
}

fn verify(
    blob: &Blob,
    ch: &mut IoChannel,
    id: BlobId,
    cs: u64,
    per: u64,
    chunk: u64,
    out: &mut dyn Write,
) -> Result<()> {
    let mut buf = vec![0u8; chunk as usize];
    let mut checked = 0u64;
    for c in 0..BLOB_CLUSTERS {
        let written = WRITTEN.contains(&c);
        let mut off = 0;
        while off < per {
            blob.read(ch, c * cs + off, &mut buf)
                .with_context(|| format!("reading cluster {c} of blob {id} at offset {off}"))?;
            let ok = if written {
                buf == pattern(id, c, off, chunk)
            } else {
                buf.iter().all(|&b| b == 0)
            };
            if !ok {
                bail!(
                    "verification failed: cluster {c} of blob {id} at offset {off} holds \
                     other bytes than were written"
                );
            }
            checked += chunk;
            off += chunk;
        }
        writeln!(
            out,
            "    cluster {c}: {}",
            if written {
                "pattern intact"
            } else {
                "reads as zeroes (a hole, no cluster allocated)"
            }
        )?;
    }
    writeln!(out, "    {} read and compared", human::bytes(checked))?;
    Ok(())
}

fn list(store: &Blobstore, out: &mut dyn Write) -> Result<()> {
    let ids = store.blob_ids();
    let cs = store.cluster_size();
    writeln!(out, "    {} blob(s):", ids.len())?;
    for id in ids {
        let m = store
            .blob_meta(id)
            .with_context(|| format!("reading the metadata of blob {id}"))?;
        let clusters = m.clusters.len() as u64;
        let mut attrs: Vec<String> = m
            .xattrs
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={:?}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                )
            })
            .collect();
        if attrs.is_empty() {
            attrs.push("no xattrs".into());
        }
        writeln!(
            out,
            "    blob {id}: {} ({clusters} clusters, {} allocated){}  {}",
            human::bytes(clusters * cs),
            m.allocated(),
            if m.flags & blobstore::FLAG_THIN != 0 {
                ", thin"
            } else {
                ""
            },
            attrs.join(" ")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_per_page_and_cluster() {
        let a = pattern(BlobId(1), 0, 0, 2 * PAGE);
        assert_eq!(a.len(), 2 * PAGE as usize);
        assert_ne!(a[..PAGE as usize], a[PAGE as usize..]);
        assert_ne!(a, pattern(BlobId(1), 1, 0, 2 * PAGE));
        assert_eq!(pattern(BlobId(1), 0, PAGE, PAGE), a[PAGE as usize..]);
    }
}
