//! Device specs as the tools accept them, and opening stores on them.
//!
//! A spec is `mem:SIZE`, `file:PATH`, a plain `PATH` (a regular file, a block device or an
//! NVMe generic character device), optionally followed by `?lba=N`, as in
//! `driver::open_uri`, or `pci:ADDRESS` (an NVMe controller bound to `uio_pci_generic`). The tools parse it themselves
//! so they can open files read-only, create image files and pick the LBA size an existing
//! store was made with.

use anyhow::{anyhow, bail, Context, Result};
use blobstore::format::superblock::SB_SIZE;
use blobstore::{recovery, Blobstore, OpenOptions};
use driver::uring::{UringDevice, UringOptions};
use driver::Device;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// LBA size used for regular files when nothing else says otherwise.
pub const DEFAULT_FILE_LBA: u32 = 4096;

/// Where a store lives.
#[derive(Clone, Debug)]
pub enum Target {
    /// A fresh in-memory device of `size` bytes (empty every time it is opened).
    Mem {
        size: u64,
        lba: Option<u32>,
        /// The spec as given, for messages.
        spec: String,
    },
    /// A regular file or block device.
    Path { path: PathBuf, lba: Option<u32> },
    /// An NVMe controller bound to `uio_pci_generic`, driven by the userspace driver
    /// (`pci:0000:00:04.0`; namespace 1).
    Pci { addr: String },
}

/// A driver's refusal to open a device; a bad spec's reason alone, since the caller's
/// context names the device already.
fn open_error(e: driver::Error) -> anyhow::Error {
    match e {
        driver::Error::BadSpec { reason, .. } => anyhow!("{reason}"),
        other => anyhow!(other),
    }
}

/// Refuses an LBA size an NVMe namespace does not have (its format decides it).
fn namespace_lba(dev: &dyn Device, lba: Option<u32>, name: &str) -> Result<()> {
    let has = dev.geometry().lba_size;
    match lba {
        Some(l) if l != has => bail!(
            "{name}: the namespace has {has}-byte LBAs, not {l} (reformat it with nvme-cli \
             to change that)"
        ),
        _ => Ok(()),
    }
}

/// What a path currently is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    Missing,
    File,
    BlockDevice,
    /// An NVMe namespace's generic character device (`/dev/ngXnY`): driven with NVMe
    /// commands through io_uring passthrough.
    NvmeChar,
    /// An NVMe controller at a PCI address (userspace driver).
    Pci,
}

/// Parses a size such as `4096`, `64K`, `1M`, `10G` (binary units); `what` names the value
/// in the error message.
pub fn parse_size(what: &str, s: &str) -> Result<u64> {
    driver::parse_size(s)
        .ok_or_else(|| anyhow!("{what} {s:?} is not a size (examples: 4096, 64K, 1M, 10G)"))
}

/// Parses an LBA size: 512 or 4096.
pub fn parse_lba(what: &str, s: &str) -> Result<u32> {
    match driver::parse_size(s) {
        Some(512) => Ok(512),
        Some(4096) => Ok(4096),
        _ => bail!("{what} {s:?}: must be 512 or 4096"),
    }
}

impl Target {
    /// Parses a spec.
    pub fn parse(spec: &str) -> Result<Target> {
        let (body, query) = match spec.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (spec, None),
        };
        let mut lba = None;
        for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("lba", v)) => lba = Some(parse_lba(&format!("{spec}: lba"), v)?),
                _ => bail!("{spec}: unknown option {kv:?} (known: lba=512 or lba=4096)"),
            }
        }
        if let Some(size) = body.strip_prefix("mem:") {
            let size = parse_size(&format!("{spec}: size"), size)?;
            if size == 0 {
                bail!("{spec}: the size must not be zero");
            }
            return Ok(Target::Mem {
                size,
                lba,
                spec: spec.to_string(),
            });
        }
        if let Some(addr) = body.strip_prefix("pci:") {
            if lba.is_some() {
                bail!("{spec}: a controller's LBA size is its namespace's (no ?lba= here)");
            }
            let Some(addr) = driver::pci::normalize_addr(addr) else {
                bail!("{spec}: not a PCI address (expected pci:DOMAIN:BUS:DEVICE.FUNCTION, e.g. pci:0000:00:04.0)");
            };
            return Ok(Target::Pci { addr });
        }
        let path = body.strip_prefix("file:").unwrap_or(body);
        if path.is_empty() {
            bail!("{spec:?}: empty path");
        }
        if let Some((scheme, _)) = path.split_once(':') {
            if !scheme.contains('/') && !Path::new(path).exists() {
                bail!(
                    "{spec}: unknown scheme {scheme:?} (known: mem:SIZE, file:PATH, \
                     pci:ADDRESS, or a path)"
                );
            }
        }
        Ok(Target::Path {
            path: PathBuf::from(path),
            lba,
        })
    }

    /// The LBA size given in the spec, if any.
    pub fn lba(&self) -> Option<u32> {
        match self {
            Target::Mem { lba, .. } | Target::Path { lba, .. } => *lba,
            Target::Pci { .. } => None,
        }
    }

    /// Whether this is an in-memory device.
    pub fn is_mem(&self) -> bool {
        matches!(self, Target::Mem { .. })
    }

    /// For messages.
    pub fn describe(&self) -> String {
        match self {
            Target::Mem { spec, .. } => spec.clone(),
            Target::Path { path, .. } => path.display().to_string(),
            Target::Pci { addr } => format!("pci:{addr}"),
        }
    }

    /// The sysfs directory of a PCI target.
    fn pci_dir(addr: &str) -> PathBuf {
        Path::new("/sys/bus/pci/devices").join(addr)
    }

    /// What the path is now (regular file, block device, or nothing); mem: counts as a file.
    pub fn path_kind(&self) -> Result<PathKind> {
        let path = match self {
            Target::Path { path, .. } => path,
            Target::Mem { .. } => return Ok(PathKind::File),
            Target::Pci { addr } => {
                return Ok(if Target::pci_dir(addr).exists() {
                    PathKind::Pci
                } else {
                    PathKind::Missing
                })
            }
        };
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => Ok(PathKind::File),
            Ok(m) if m.file_type().is_block_device() => Ok(PathKind::BlockDevice),
            Ok(m) if m.file_type().is_char_device() => Ok(PathKind::NvmeChar),
            Ok(m) if m.is_dir() => bail!("{}: is a directory", path.display()),
            Ok(_) => bail!("{}: not a regular file or block device", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PathKind::Missing),
            Err(e) => Err(e).with_context(|| format!("{}: cannot stat", path.display())),
        }
    }

    /// Opens the device, with `lba` as the LBA size when given (else the spec's, else the
    /// default). A missing path is an error.
    pub fn open_device(&self, lba: Option<u32>, read_only: bool) -> Result<Arc<dyn Device>> {
        let lba = lba.or(self.lba());
        match self {
            Target::Mem { size, .. } => {
                let spec = format!("mem:{size}?lba={}", lba.unwrap_or(DEFAULT_FILE_LBA));
                driver::open_uri(&spec).with_context(|| self.describe())
            }
            Target::Pci { addr } => {
                let dev = driver::pci::PciDevice::open(
                    addr,
                    &driver::pci::PciOptions {
                        read_only,
                        ..driver::pci::PciOptions::default()
                    },
                )
                .map_err(open_error)
                .with_context(|| format!("pci:{addr}: cannot open"))?;
                namespace_lba(&dev, lba, &self.describe())?;
                Ok(Arc::new(dev))
            }
            Target::Path { path, .. } => {
                if self.path_kind()? == PathKind::Missing {
                    bail!("{}: no such file or device", path.display());
                }
                let p = path
                    .to_str()
                    .ok_or_else(|| anyhow!("{}: path is not valid UTF-8", path.display()))?;
                if self.path_kind()? == PathKind::NvmeChar {
                    let dev = driver::passthru::PassthruDevice::open(
                        p,
                        &driver::passthru::PassthruOptions {
                            read_only,
                            no_poll: false,
                        },
                    )
                    .map_err(open_error)
                    .with_context(|| format!("{}: cannot open", path.display()))?;
                    namespace_lba(&dev, lba, &self.describe())?;
                    return Ok(Arc::new(dev));
                }
                let dev = UringDevice::open(
                    p,
                    &UringOptions {
                        lba_size: lba,
                        read_only,
                    },
                )
                .map_err(open_error)
                .with_context(|| format!("{}: cannot open", path.display()))?;
                Ok(Arc::new(dev))
            }
        }
    }

    /// Opens the device for an existing store. For a regular file without an LBA size in
    /// the spec, the LBA size is the one the store was made with (read from its superblock).
    pub fn open_store_device(&self, read_only: bool) -> Result<Arc<dyn Device>> {
        match self {
            Target::Mem { spec, .. } => bail!(
                "{spec}: not a blobstore: a mem: device starts empty every time \
                 (format it with `blobfs mkfs`, or try `blobfs demo {spec}`)"
            ),
            Target::Pci { .. } => {}
            Target::Path { path, .. } => {
                if let Ok(m) = std::fs::metadata(path) {
                    if m.is_file() && m.len() < 2 * SB_SIZE as u64 {
                        bail!(
                            "{}: not a blobstore: the file is {} bytes, too small to hold one",
                            path.display(),
                            m.len()
                        );
                    }
                }
            }
        }
        let dev = self.open_device(None, read_only)?;
        if self.lba().is_some() || self.path_kind()? != PathKind::File {
            return Ok(dev);
        }
        let mut qp = dev
            .open_qpair(4)
            .with_context(|| format!("{}: cannot open a queue pair", self.describe()))?;
        if let Ok(pair) = recovery::read_superblocks(qp.as_mut(), dev.as_ref()) {
            let unit = pair.active.log_unit;
            if unit != dev.geometry().lba_size && (unit == 512 || unit == 4096) {
                drop(qp);
                drop(dev);
                return self.open_device(Some(unit), read_only);
            }
        }
        Ok(dev)
    }

    /// Opens the store on this target.
    pub fn open_store(&self, read_only: bool) -> Result<(Arc<dyn Device>, Blobstore)> {
        let dev = self.open_store_device(read_only)?;
        let store = open_store_on(self, &dev, read_only)?;
        Ok((dev, store))
    }
}

/// How long commands wait for a store another process holds (a filesystem just unmounted
/// may still be writing back and closing).
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// An advisory lock (`flock`) on the image file or device node, held while the value
/// lives: exclusive for anything that writes (mount, mkfs, demo), shared for read-only
/// mounts. It keeps two writers off one store; the driver itself does not lock.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

fn try_flock(f: &File, exclusive: bool) -> std::io::Result<bool> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    } | libc::LOCK_NB;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

impl Target {
    /// Locks the store (`None` for mem:, which no other process can see), waiting up to
    /// `wait` while another process holds it.
    ///
    /// A PCI controller is locked by the driver itself (one process per controller); this
    /// only waits until no process has it open.
    pub fn lock(&self, exclusive: bool, wait: Duration) -> Result<Option<StoreLock>> {
        let path = match self {
            Target::Path { path, .. } => path.clone(),
            Target::Mem { .. } => return Ok(None),
            Target::Pci { addr } => Target::pci_dir(addr).join("resource0"),
        };
        let pci = matches!(self, Target::Pci { .. });
        if pci && !path.exists() {
            // Not a device with registers: opening it says what it is.
            return Ok(None);
        }
        let exclusive = exclusive || pci;
        let file = File::open(&path)
            .with_context(|| format!("{}: cannot open to lock it", path.display()))?;
        let until = Instant::now() + wait;
        loop {
            if try_flock(&file, exclusive)
                .with_context(|| format!("{}: cannot lock", self.describe()))?
            {
                if pci {
                    // Free now; the driver takes its own lock when it opens the controller.
                    return Ok(None);
                }
                return Ok(Some(StoreLock { _file: file }));
            }
            if Instant::now() >= until {
                bail!(
                    "{}: in use by another process (mounted, or a blobfs command running on \
                     it); unmount it first",
                    self.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until no process holds the store exclusively (a mount's server has closed
    /// it), at most `wait`. Returns whether it is free; `true` for mem:.
    pub fn wait_unlocked(&self, wait: Duration) -> bool {
        self.lock(false, wait).is_ok()
    }
}

/// Opens the store on an already opened device.
pub fn open_store_on(target: &Target, dev: &Arc<dyn Device>, read_only: bool) -> Result<Blobstore> {
    Blobstore::open(
        Arc::clone(dev),
        OpenOptions {
            read_only,
            ..OpenOptions::default()
        },
    )
    .with_context(|| format!("{}: cannot open the blobstore", target.describe()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert!(matches!(
            Target::parse("mem:64M").unwrap(),
            Target::Mem {
                size: 67108864,
                lba: None,
                ..
            }
        ));
        assert!(matches!(
            Target::parse("mem:1G?lba=512").unwrap(),
            Target::Mem { lba: Some(512), .. }
        ));
        match Target::parse("file:/tmp/x.img").unwrap() {
            Target::Path { path, lba } => {
                assert_eq!(path, PathBuf::from("/tmp/x.img"));
                assert_eq!(lba, None);
            }
            other => panic!("{other:?}"),
        }
        assert!(Target::parse("mem:abc").is_err());
        assert!(Target::parse("mem:0").is_err());
        assert!(Target::parse("x.img?lba=1000").is_err());
        assert!(Target::parse("x.img?color=red").is_err());
        assert!(Target::parse("nvme-foo:bar").is_err());
        assert!(Target::parse("file:").is_err());
        assert!(Target::parse("").is_err());
    }

    #[test]
    fn values() {
        assert_eq!(parse_size("--size", "1G").unwrap(), 1 << 30);
        let e = parse_size("--size", "lots").unwrap_err().to_string();
        assert!(e.contains("--size \"lots\""), "{e}");
        assert_eq!(parse_lba("--lba-size", "512").unwrap(), 512);
        assert_eq!(parse_lba("--lba-size", "4K").unwrap(), 4096);
        assert!(parse_lba("--lba-size", "1024").is_err());
    }
}
