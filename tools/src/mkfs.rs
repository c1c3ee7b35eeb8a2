//! `blobfs mkfs`: format a device or image file with BlobFS (or a bare blobstore).

use crate::device::{self, PathKind, Target, DEFAULT_FILE_LBA, LOCK_WAIT};
use crate::human;
use anyhow::{bail, Context, Result};
use blobfs::FileSystem;
use blobstore::{recovery, Blobstore, Error as StoreError, FormatOptions};
use std::io::Write;
use std::path::Path;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image file, block device, file:PATH or mem:SIZE (see below).
    #[arg(value_name = "PATH")]
    pub path: String,
    /// Size of the image file: creates PATH if it does not exist (required then), or sets
    /// the length of an existing file. Not for block devices or mem:SIZE.
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    /// Cluster size: the unit of allocation, a power of two from 16K to 1G.
    #[arg(long, value_name = "SIZE", default_value = "1M")]
    pub cluster_size: String,
    /// LBA (block) size of a regular file or mem: device, 512 or 4096 [default: 4096]. A
    /// block device always uses its own logical block size; if given, it must match.
    #[arg(long, value_name = "BYTES")]
    pub lba_size: Option<String>,
    /// Do not deallocate (discard/punch) the whole device first.
    #[arg(long)]
    pub no_discard: bool,
    /// Overwrite an existing blobstore (or BlobFS filesystem).
    #[arg(long)]
    pub force: bool,
    /// Make a bare blobstore, without the BlobFS filesystem (no root directory).
    #[arg(long)]
    pub blobstore_only: bool,
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<()> {
    let target = Target::parse(&args.path)?;
    let cluster_size = device::parse_size("--cluster-size", &args.cluster_size)?;
    let cluster_size = u32::try_from(cluster_size)
        .ok()
        .filter(|c| c.is_power_of_two() && (16 << 10..=1 << 30).contains(c))
        .with_context(|| {
            format!(
                "--cluster-size {:?}: must be a power of two from 16K to 1G",
                args.cluster_size
            )
        })?;
    let lba = match (&args.lba_size, target.lba()) {
        (Some(s), spec) => {
            let l = device::parse_lba("--lba-size", s)?;
            if let Some(spec) = spec.filter(|&x| x != l) {
                bail!("--lba-size {l} contradicts ?lba={spec} in {:?}", args.path);
            }
            Some(l)
        }
        (None, spec) => spec,
    };
    let size = match &args.size {
        None => None,
        Some(s) => {
            let n = device::parse_size("--size", s)?;
            let unit = u64::from(lba.unwrap_or(DEFAULT_FILE_LBA));
            if n == 0 || !n.is_multiple_of(unit) {
                bail!("--size {s:?}: must be a non-zero multiple of the {unit}-byte LBA size");
            }
            Some(n)
        }
    };

    let kind = target.path_kind()?;
    // Nobody else may use a store while it is formatted (a mounted image, say).
    let _lock = if kind == PathKind::Missing {
        None
    } else {
        target.lock(true, LOCK_WAIT)?
    };
    let mut created = None;
    match (&target, kind) {
        (Target::Mem { .. }, _) => {
            if size.is_some() {
                bail!("--size does not apply to mem:SIZE: the size is part of the spec");
            }
        }
        (Target::Path { path, .. }, PathKind::Missing) => {
            let Some(n) = size else {
                bail!(
                    "{}: no such file; give --size to create an image file of that size",
                    path.display()
                );
            };
            create_image(path, n)?;
            created = Some(path.clone());
        }
        (Target::Path { .. }, PathKind::BlockDevice | PathKind::NvmeChar)
        | (Target::Pci { .. }, PathKind::Pci) => {
            if size.is_some() {
                bail!(
                    "{}: is a device; --size applies to image files only",
                    target.describe()
                );
            }
            refuse_existing(&target, args.force)?;
        }
        (Target::Pci { addr }, _) => bail!("pci:{addr}: no such PCI device"),
        (Target::Path { path, .. }, PathKind::Pci) => {
            bail!("{}: not a file or device", path.display())
        }
        (Target::Path { path, .. }, PathKind::File) => {
            refuse_existing(&target, args.force)?;
            if let Some(n) = size {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|f| f.set_len(n))
                    .with_context(|| {
                        format!("{}: cannot set the length to {n} bytes", path.display())
                    })?;
            }
        }
    }

    let res = format_and_report(
        &target,
        lba,
        cluster_size,
        !args.no_discard,
        !args.blobstore_only,
        out,
    );
    if res.is_err() {
        // Leave nothing half-made behind: an image this run created goes away again.
        if let Some(p) = created {
            let _ = std::fs::remove_file(p);
        }
    }
    res
}

fn create_image(path: &Path, size: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("{}: cannot create the image file", path.display()))?;
    if let Err(e) = f.set_len(size) {
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| {
            format!(
                "{}: cannot make the image file {size} bytes long",
                path.display()
            )
        });
    }
    Ok(())
}

/// Fails if the target already holds a blobstore (valid, damaged or of a newer format),
/// unless `force`.
fn refuse_existing(target: &Target, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    // Something too small or unopenable holds no store; the real open reports why.
    let Ok(dev) = target.open_device(None, true) else {
        return Ok(());
    };
    let mut qp = dev
        .open_qpair(4)
        .with_context(|| format!("{}: cannot open a queue pair", target.describe()))?;
    let name = target.describe();
    match recovery::read_superblocks(qp.as_mut(), dev.as_ref()) {
        Ok(pair) => bail!(
            "{name} already holds a blobstore (uuid {}, {} clusters of {}); \
             use --force to overwrite it",
            human::uuid(&pair.active.uuid),
            pair.active.cluster_count,
            human::bytes(u64::from(pair.active.cluster_size)),
        ),
        Err(StoreError::NotABlobstore(_)) => Ok(()),
        Err(e @ (StoreError::Corruption(_) | StoreError::Unsupported(_))) => {
            bail!("{name} holds what looks like a blobstore ({e}); use --force to overwrite it")
        }
        Err(e) => Err(e).with_context(|| format!("{name}: cannot read the superblocks")),
    }
}

fn format_and_report(
    target: &Target,
    lba: Option<u32>,
    cluster_size: u32,
    discard: bool,
    filesystem: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let dev = target.open_device(lba, false)?;
    let geom = dev.geometry();
    let name = target.describe();
    let fopts = FormatOptions {
        cluster_size,
        discard,
        uuid: None,
    };
    if filesystem {
        FileSystem::format(dev.clone(), &fopts)
            .with_context(|| format!("{name}: cannot format"))?;
    } else {
        Blobstore::format(dev.clone(), &fopts).with_context(|| format!("{name}: cannot format"))?;
    }
    // Read the new store back, as any later user would.
    let store = device::open_store_on(target, &dev, true)?;
    let info = store.info();
    let kind = match target.path_kind()? {
        _ if target.is_mem() => "in-memory device, discarded on exit",
        PathKind::BlockDevice => "block device",
        PathKind::NvmeChar => "NVMe namespace, io_uring passthrough",
        PathKind::Pci => "NVMe controller, userspace driver",
        _ => "image file",
    };
    if filesystem {
        writeln!(out, "formatted {name} as a new BlobFS filesystem")?;
    } else {
        writeln!(
            out,
            "formatted {name} as a new blobstore (no filesystem: --blobstore-only)"
        )?;
    }
    writeln!(
        out,
        "  device:        {} ({kind}), {}-byte LBAs",
        human::bytes(geom.capacity()),
        geom.lba_size
    )?;
    writeln!(out, "  uuid:          {}", human::uuid(&info.uuid))?;
    writeln!(
        out,
        "  cluster size:  {}",
        human::bytes(u64::from(info.cluster_size))
    )?;
    writeln!(
        out,
        "  clusters:      {} ({} of store space), {} free, {} used by metadata",
        info.cluster_count,
        human::bytes(info.cluster_count * u64::from(info.cluster_size)),
        info.free_clusters,
        info.used_clusters
    )?;
    writeln!(
        out,
        "  discard:       {}",
        if discard { "yes" } else { "no (--no-discard)" }
    )?;
    if filesystem {
        writeln!(out, "  filesystem:    BlobFS, an empty root directory")?;
        if !target.is_mem() {
            writeln!(out, "  mount it with: blobfs mount {name} MOUNTPOINT")?;
        }
    }
    Ok(())
}
