//! Mounting in-process, unmounting by path, and reading `/proc/self/mountinfo`.

use crate::filesystem::{BlobFuse, CloseStatus};
use crate::options::MountOptions;
use blobfs::FileSystem;
use fuser::BackgroundSession;
use std::ffi::CString;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One mount, as `/proc/self/mountinfo` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    /// `fuse.blobfs` for BlobFS mounts.
    pub fstype: String,
    /// The mount's source (for BlobFS: the fsname, the image path by default).
    pub source: String,
    /// Per-mount options (`rw`, `nosuid`...).
    pub options: String,
    /// The device number of the mount (major, minor).
    pub dev: (u32, u32),
}

/// Undoes the octal escapes of mountinfo fields (`\040` for a space...).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    let (maj, min) = l.get(2)?.split_once(':')?;
    Some(MountEntry {
        mount_point: PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(l.get(4)?))),
        options: (*l.get(5)?).to_string(),
        fstype: String::from_utf8_lossy(&unescape(r.first()?)).into_owned(),
        source: String::from_utf8_lossy(&unescape(r.get(1)?)).into_owned(),
        dev: (maj.parse().ok()?, min.parse().ok()?),
    })
}

/// Every mount this process sees, in mount order.
pub fn mounts() -> io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_mountinfo_line).collect())
}

/// The absolute path of a mountpoint as mountinfo spells it, without asking the mounted
/// filesystem itself (a dead FUSE mount answers nothing but ENOTCONN).
pub fn mountpoint_path(p: &Path) -> io::Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) if name != ".." => Ok(parent.canonicalize()?.join(name)),
        _ => abs.canonicalize(),
    }
}

/// The topmost mount at `p`, if `p` is a mountpoint.
pub fn find_mount(p: &Path) -> io::Result<Option<MountEntry>> {
    let mp = mountpoint_path(p)?;
    Ok(mounts()?.into_iter().rev().find(|m| m.mount_point == mp))
}

/// Whether `p` is a FUSE mount whose server is gone ("transport endpoint is not
/// connected").
pub fn is_stale(p: &Path) -> bool {
    matches!(std::fs::metadata(p), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
}

/// How [`unmount`] treats a mount in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmount {
    /// Fail with EBUSY.
    Strict,
    /// Detach at once; the filesystem stays alive for those still using it and ends when
    /// the last of them leaves.
    Lazy,
    /// Strict first, lazy when busy.
    LazyIfBusy,
}

fn umount2(mp: &Path, flags: libc::c_int) -> io::Result<()> {
    let c = CString::new(mp.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the mountpoint path"))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call; umount2 only
    // reads it.
    let rc = unsafe { libc::umount2(c.as_ptr(), flags | libc::UMOUNT_NOFOLLOW) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn fusermount_unmount(mp: &Path, lazy: bool) -> io::Result<()> {
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg("--").arg(mp).output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("unmounting needs root or fusermount3 (package fuse3): {e}"),
        )
    })?;
    if out.status.success() {
        Ok(())
    } else {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let kind = if msg.contains("busy") {
            io::ErrorKind::ResourceBusy
        } else {
            io::ErrorKind::Other
        };
        Err(io::Error::new(kind, format!("fusermount3 -u: {msg}")))
    }
}

/// Unmounts the filesystem mounted at `p`: `umount2(2)` as root, `fusermount3 -u`
/// otherwise. Returns whether the mount was only detached lazily because it was busy.
pub fn unmount(p: &Path, how: Unmount) -> io::Result<bool> {
    let mp = mountpoint_path(p)?;
    let once = |lazy: bool| -> io::Result<()> {
        match umount2(&mp, if lazy { libc::MNT_DETACH } else { 0 }) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => fusermount_unmount(&mp, lazy),
            r => r,
        }
    };
    match how {
        Unmount::Strict => once(false).map(|()| false),
        Unmount::Lazy => once(true).map(|()| false),
        Unmount::LazyIfBusy => match once(false) {
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    || e.kind() == io::ErrorKind::ResourceBusy =>
            {
                once(true).map(|()| true)
            }
            r => r.map(|()| false),
        },
    }
}

/// Waits until `p` is no longer the mountpoint of `entry` (for a lazy unmount, until the
/// kernel has let go of it), at most `timeout`. Returns whether it is gone.
pub fn wait_unmounted(entry: &MountEntry, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    loop {
        let still = mounts()
            .map(|ms| ms.iter().any(|m| m == entry))
            .unwrap_or(false);
        if !still {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sets the kernel read-ahead of the mount at `p` (FUSE starts with at most 128 KiB, and
/// `init` can only lower it). Best effort: needs root and sysfs. Looks only at mountinfo,
/// never at the mount itself, so it may be called before the session serves requests.
pub fn tune_readahead(p: &Path, kib: u32) -> io::Result<()> {
    write_bdi(p, "read_ahead_kb", &kib.to_string())
}

/// Lets the mount at `p` keep as many dirty pages in the kernel's page cache as any disk
/// filesystem may. The kernel caps a FUSE mount at 1% of the dirty threshold, strictly
/// (`strict_limit`: throttled even when the system has few dirty pages), to stop an
/// untrusted server from pinning memory; with the writeback cache that cap turns 4 KiB
/// random writes into ~70k round trips per second instead of memory-speed writes (measured:
/// 73k vs 524k IOPS, fio psync on a 1 GiB file). Our server is the storage stack itself
/// and writes its device with O_DIRECT, so it cannot deadlock on page-cache writeback. The
/// per-mount share (`max_ratio`, 1%) still applies once the system is near its own dirty
/// limits. Needs root and Linux 6.2 or later (sysfs `strict_limit`); best effort.
pub fn lift_strict_dirty_limit(p: &Path) -> io::Result<()> {
    write_bdi(p, "strict_limit", "0")
}

/// Writes `value` to the backing-device attribute `name` of the mount at `p`.
fn write_bdi(p: &Path, name: &str, value: &str) -> io::Result<()> {
    let m = find_mount(p)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not a mountpoint"))?;
    std::fs::write(
        format!("/sys/class/bdi/{}:{}/{name}", m.dev.0, m.dev.1),
        value,
    )
}

/// Mounts `bf` at `mountpoint` as `config` says and returns the session, not yet running,
/// with the request threads set to take turns (one reads, the others wait until a request
/// blocks: see `threads.rs`). Both [`mount`] and `blobfs mount` start sessions here. The
/// mount's read-ahead is raised to 4 MiB (about a tenth faster than 1 MiB reading a 1 GiB
/// file with fio, 1 MiB reads; FUSE starts at 128 KiB) and, with the writeback cache, the
/// kernel's strict dirty-page cap is lifted ([`lift_strict_dirty_limit`]). Both are best
/// effort: a failure is logged, the mount works either way.
pub fn session(
    bf: BlobFuse,
    mountpoint: &Path,
    config: &fuser::Config,
) -> io::Result<fuser::Session<BlobFuse>> {
    let threads = bf.threads();
    let writeback_cache = bf.writeback_cache();
    let s = fuser::Session::new(bf, mountpoint, config)?;
    threads.start(config.n_threads.unwrap_or(1).max(1), Some(s.as_fd()))?;
    if let Err(e) = tune_readahead(mountpoint, 4096) {
        log::info!(
            "cannot raise the read-ahead of {}: {e}",
            mountpoint.display()
        );
    }
    if writeback_cache {
        if let Err(e) = lift_strict_dirty_limit(mountpoint) {
            log::warn!(
                "cannot lift the kernel's dirty-page cap of {} (writes stay throttled): {e}",
                mountpoint.display()
            );
        }
    }
    Ok(s)
}

/// A filesystem mounted in-process (a background FUSE session). Dropping it detaches the
/// mount lazily and waits a little for the session to end; [`Mounted::unmount`] is the
/// clean way, which also reports how closing the filesystem went.
#[derive(Debug)]
pub struct Mounted {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    status: CloseStatus,
}

/// Mounts `fs` at `mountpoint` in this process, served by background threads.
pub fn mount(fs: FileSystem, mountpoint: &Path, opts: &MountOptions) -> io::Result<Mounted> {
    let config = opts
        .config()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mp = mountpoint_path(mountpoint)?;
    let bf = BlobFuse::new(fs, opts);
    let status = bf.close_status();
    let session = session(bf, &mp, &config)?.spawn()?;
    Ok(Mounted {
        session: Some(session),
        mountpoint: mp,
        status,
    })
}

impl Mounted {
    /// Where it is mounted (absolute).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The outcome of the close at the session's end.
    pub fn close_status(&self) -> CloseStatus {
        self.status.clone()
    }

    /// Unmounts (EBUSY while in use: then nothing changed and it may be tried again),
    /// waits for the session to end and returns how closing the filesystem went.
    pub fn unmount(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        if let Err(e) = unmount(&self.mountpoint, Unmount::Strict) {
            self.session = Some(session);
            return Err(e);
        }
        session.join()?;
        match self.status.get() {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(io::Error::other(format!("closing the filesystem: {e}"))),
            None => Err(io::Error::other("the session ended without closing")),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let _ = unmount(&self.mountpoint, Unmount::Lazy);
        // Whoever still uses the detached mount keeps the session alive: do not hang here.
        let until = Instant::now() + Duration::from_secs(10);
        while !session.guard.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        if session.guard.is_finished() {
            let _ = session.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let l = "36 35 0:52 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:1 - fuse.blobfs /tmp/x.img rw,user_id=0,group_id=0,default_permissions";
        let m = parse_mountinfo_line(l).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/tmp/a b"));
        assert_eq!(m.fstype, "fuse.blobfs");
        assert_eq!(m.source, "/tmp/x.img");
        assert_eq!(m.dev, (0, 52));
        assert_eq!(m.options, "rw,nosuid,nodev,relatime");
        assert!(parse_mountinfo_line("garbage").is_none());
        assert_eq!(unescape("a\\134b\\011"), b"a\\b\t");
        assert_eq!(unescape("trail\\04"), b"trail\\04");
    }

    #[test]
    fn mountpoint_paths() {
        let here = std::env::current_dir().unwrap().canonicalize().unwrap();
        assert_eq!(mountpoint_path(Path::new("x")).unwrap(), here.join("x"));
        assert_eq!(mountpoint_path(Path::new("/")).unwrap(), PathBuf::from("/"));
        assert!(mounts()
            .unwrap()
            .iter()
            .any(|m| m.mount_point == Path::new("/")));
    }
}
