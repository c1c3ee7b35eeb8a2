//! `blobfs snapshot` and `blobfs clone`: whole-filesystem snapshots and clones of an
//! unmounted image (see blobfs/src/snapshots.rs).

use crate::offline::{local_time, Locked};
use anyhow::{bail, Result};
use blobfs::SnapKind;
use std::io::Write;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image file or block device holding a BlobFS filesystem (not mounted).
    #[arg(value_name = "IMAGE")]
    pub path: String,
    /// Name of the snapshot to make (or, with --delete, to delete).
    #[arg(value_name = "NAME", required_unless_present = "list")]
    pub name: Option<String>,
    /// List snapshots and clones instead.
    #[arg(long, conflicts_with = "delete")]
    pub list: bool,
    /// Delete snapshot or clone NAME (a snapshot with a clone made from it is refused).
    #[arg(long)]
    pub delete: bool,
    /// With --list: one JSON array instead of a table.
    #[arg(long, requires = "list")]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct CloneArgs {
    /// Image file or block device holding a BlobFS filesystem (not mounted).
    #[arg(value_name = "IMAGE")]
    pub path: String,
    /// The snapshot to clone.
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: String,
    /// Name of the new, writable clone.
    #[arg(value_name = "NAME")]
    pub name: String,
}

fn kind_name(k: SnapKind) -> &'static str {
    match k {
        SnapKind::Snapshot => "snapshot",
        SnapKind::Clone => "clone",
    }
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<()> {
    if args.list {
        let img = Locked::new(&args.path, false)?;
        let fs = img.open_fs(true)?;
        let list = fs.snapshots()?;
        if args.json {
            let v: Vec<serde_json::Value> = list
                .iter()
                .map(|i| {
                    serde_json::json!({
                        "name": i.name,
                        "kind": kind_name(i.kind),
                        "created": crate::offline::rfc3339(i.created),
                        "origin": i.origin,
                        "inodes": i.inodes,
                    })
                })
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        } else if list.is_empty() {
            writeln!(out, "{}: no snapshots", img.name())?;
        } else {
            writeln!(
                out,
                "{:<24} {:<9} {:<20} {:>8}  ORIGIN",
                "NAME", "KIND", "CREATED", "INODES"
            )?;
            for i in &list {
                writeln!(
                    out,
                    "{:<24} {:<9} {:<20} {:>8}  {}",
                    i.name,
                    kind_name(i.kind),
                    local_time(i.created, "%Y-%m-%d %H:%M:%S"),
                    i.inodes,
                    i.origin.as_deref().unwrap_or("-")
                )?;
            }
        }
        return Ok(());
    }
    let Some(name) = args.name.as_deref() else {
        bail!("a snapshot NAME is needed (or --list)");
    };
    let img = Locked::new(&args.path, true)?;
    let fs = img.open_fs(false)?;
    if args.delete {
        fs.delete_snapshot(name)
            .map_err(|e| anyhow::anyhow!("{}: cannot delete {name:?}: {e}", img.name()))?;
        fs.close()?;
        writeln!(out, "deleted {name} from {}", img.name())?;
        return Ok(());
    }
    let info = fs
        .snapshot(name)
        .map_err(|e| anyhow::anyhow!("{}: cannot snapshot as {name:?}: {e}", img.name()))?;
    fs.close()?;
    writeln!(
        out,
        "snapshot {} of {}: {} inodes (mount it with: blobfs mount --snapshot {} {} DIR)",
        info.name,
        img.name(),
        info.inodes,
        info.name,
        args.path
    )?;
    Ok(())
}

pub fn clone(args: &CloneArgs, out: &mut dyn Write) -> Result<()> {
    let img = Locked::new(&args.path, true)?;
    let fs = img.open_fs(false)?;
    let info = fs.clone_snapshot(&args.snapshot, &args.name).map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot clone {:?} as {:?}: {e}",
            img.name(),
            args.snapshot,
            args.name
        )
    })?;
    fs.close()?;
    writeln!(
        out,
        "clone {} of snapshot {} on {}: {} inodes, writable (mount it with: blobfs mount \
         --snapshot {} {} DIR)",
        info.name,
        args.snapshot,
        img.name(),
        info.inodes,
        info.name,
        args.path
    )?;
    Ok(())
}
