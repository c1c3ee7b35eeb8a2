//! `blobfs mount`, `blobfs umount`, and the `mount.fuse.blobfs` helper that mount(8) runs
//! for `-t fuse.blobfs` and fstab lines.
//!
//! Foreground (the default): mount, serve until unmounted, then close the filesystem
//! (write back, commit, checkpoint) and exit. SIGINT, SIGTERM and SIGHUP unmount (lazily if
//! the mount is busy), so Ctrl-C ends a foreground mount cleanly.
//!
//! Background: the command starts itself again as `blobfs mount ... --foreground` in a new
//! session (setsid, stdio on /dev/null, working directory /), with a pipe on which the
//! child says `ok` once the mount is up, or why it failed; the parent returns then. So
//! nothing forks after threads exist, and errors before the mount still reach the caller.

use crate::device::{Target, LOCK_WAIT};
use anyhow::{anyhow, bail, Context, Result};
use blobfs::{FileSystem, FsOptions};
use blobfs_fuse::{find_mount, is_stale, mountpoint_path, unmount, BlobFuse, MountOptions};
use blobfs_fuse::{OptionError, Unmount, FSTYPE};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image file, block device, file:PATH or mem:SIZE holding a BlobFS filesystem.
    #[arg(value_name = "IMAGE_OR_DEVICE")]
    pub path: String,
    /// An existing directory to mount on.
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
    /// Mount options, separated by commas; may be repeated (see below).
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Stay attached until unmounted (the default); Ctrl-C or SIGTERM unmounts.
    #[arg(short = 'f', long, conflicts_with = "background")]
    pub foreground: bool,
    /// Return once mounted, leaving a server process behind.
    #[arg(long)]
    pub background: bool,
    /// Internal: where a --background parent waits to hear that the mount is up.
    #[arg(long, value_name = "FD", hide = true)]
    pub ready_fd: Option<i32>,
    /// Mount snapshot or clone NAME instead of the live tree (`blobfs snapshot --list
    /// IMAGE` lists them): a snapshot needs `-o ro`; a clone mounts read-write.
    #[arg(long, value_name = "NAME")]
    pub snapshot: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct UmountArgs {
    /// Where the BlobFS filesystem is mounted.
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
    /// Detach even if busy: the filesystem is closed when the last process using it lets go.
    #[arg(short = 'l', short_alias = 'z', long)]
    pub lazy: bool,
    /// Return at once instead of waiting until the server has written everything back
    /// and closed the store.
    #[arg(long)]
    pub no_wait: bool,
}

/// Text for `blobfs mount --help`.
pub const MOUNT_OPTIONS_HELP: &str = "\
Mount options (-o, comma separated):
  ro, rw               read-only (the filesystem is opened read-only too) or read-write
  allow_other          let every user in (the kernel checks permissions: default_permissions
                       is always on); non-root users need user_allow_other in /etc/fuse.conf
  allow_root           let root in besides the owner
  auto_unmount         fusermount3 unmounts if the server dies (implies allow_root unless
                       allow_other is given)
  fsname=NAME          the source shown by mount(8) and df (default: the image path)
  threads=N            request threads (default 4)
  writeback_cache, no_writeback_cache
                       let the kernel cache writes in its page cache like a disk filesystem
                       (default: on); fsync still returns only once the data is durable
  dev, nodev, suid, nosuid, exec, noexec, atime, noatime, sync, async, dirsync
                       kernel mount flags, as for any file system (FUSE defaults: nodev,nosuid)
  defaults, auto, noauto, user, nouser, _netdev, nofail, relatime, x-*, ...
                       accepted and ignored (mount(8) and fstab pass them)

The server holds a lock on the image while mounted, so nothing else writes to it.
From mount(8) and /etc/fstab (with mount.fuse.blobfs installed by `make install`):
  mount -t fuse.blobfs ./blobfs.img /mnt/blobfs -o allow_other
  /srv/blobfs.img  /mnt/blobfs  fuse.blobfs  defaults,allow_other  0 0";

pub fn run(args: &Args, out: &mut dyn Write) -> Result<()> {
    if args.background && args.ready_fd.is_none() {
        return background(args, out);
    }
    let mut ready = Ready::from_fd(args.ready_fd)?;
    let r = serve(args, &mut ready);
    if let Err(e) = &r {
        ready.send(&format!("{e:#}"));
    }
    r
}

/// The write end of the readiness pipe of a --background parent.
struct Ready(Option<File>);

impl Ready {
    fn from_fd(fd: Option<i32>) -> Result<Ready> {
        let Some(fd) = fd else {
            return Ok(Ready(None));
        };
        // SAFETY: F_GETFD only inspects the descriptor table entry.
        if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            bail!("--ready-fd {fd}: not an open file descriptor");
        }
        // SAFETY: the descriptor was opened by the parent for us alone and is valid (checked
        // above); from here on this File owns it and nothing else closes it.
        let f = unsafe { File::from_raw_fd(fd) };
        // Keep it out of programs started from here on (fusermount3).
        // SAFETY: F_SETFD on a descriptor we own.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        Ok(Ready(Some(f)))
    }

    fn is_piped(&self) -> bool {
        self.0.is_some()
    }

    /// Sends one message (the first only) and closes the pipe.
    fn send(&mut self, msg: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = writeln!(f, "{msg}");
        }
    }
}

/// The fsname of a mount of `target`: the image's absolute path, so that df, mount(8)
/// and `blobfs umount` know where it comes from.
fn fsname_of(target: &Target) -> String {
    match target {
        Target::Path { path, .. } => path
            .canonicalize()
            .ok()
            .and_then(|p| p.to_str().map(str::to_string))
            .filter(|s| !s.contains(|c: char| c == ',' || c.is_whitespace()))
            .unwrap_or_else(|| "blobfs".into()),
        Target::Mem { spec, .. } => spec.clone(),
        Target::Pci { addr } => format!("pci:{addr}"),
    }
}

fn parse_options(target: &Target, given: &[String], sloppy: bool) -> Result<MountOptions> {
    let mut opts = MountOptions {
        fsname: fsname_of(target),
        ..MountOptions::default()
    };
    for o in given {
        for one in o.split(',') {
            match opts.apply(one) {
                Err(OptionError::Unknown(_)) if sloppy => {}
                r => r.map_err(|e| anyhow!("-o {o}: {e}"))?,
            }
        }
    }
    opts.config().map_err(|e| anyhow!("-o: {e}"))?;
    Ok(opts)
}

/// Checks the mountpoint: an existing directory, not already a BlobFS mount. A dead FUSE
/// mount there (its server gone) is cleared first.
fn check_mountpoint(p: &Path) -> Result<PathBuf> {
    let mp = mountpoint_path(p).with_context(|| format!("{}: no such directory", p.display()))?;
    if is_stale(&mp) {
        eprintln!(
            "blobfs: {}: clearing a dead FUSE mount (its server is gone)",
            mp.display()
        );
        unmount(&mp, Unmount::Lazy)
            .with_context(|| format!("{}: cannot clear the dead mount", mp.display()))?;
    }
    match std::fs::metadata(&mp) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{}: not a directory", mp.display()),
        Err(e) => return Err(e).with_context(|| format!("{}: no such directory", mp.display())),
    }
    if let Some(m) = find_mount(&mp)? {
        if m.fstype == FSTYPE {
            bail!(
                "{}: already a BlobFS mount (of {}); unmount it first: blobfs umount {}",
                mp.display(),
                m.source,
                mp.display()
            );
        }
    }
    Ok(mp)
}

/// Opens the filesystem on `target` (or its snapshot or clone `view`); a mem: device is
/// formatted first.
fn open_fs(target: &Target, read_only: bool, view: Option<&str>) -> Result<FileSystem> {
    let name = target.describe();
    let dev = if target.is_mem() {
        if read_only {
            bail!("{name}: a new in-memory device cannot be mounted read-only");
        }
        let dev = target.open_device(None, false)?;
        FileSystem::format(Arc::clone(&dev), &blobstore::FormatOptions::default())
            .with_context(|| format!("{name}: cannot format"))?;
        dev
    } else {
        target.open_store_device(read_only)?
    };
    FileSystem::open(
        dev,
        FsOptions {
            read_only,
            view: view.map(str::to_string),
            ..FsOptions::default()
        },
    )
    .map_err(|e| match e {
        blobfs::Error::NotBlobfs(_) => {
            anyhow!("{name}: {e}; `blobfs mkfs` makes a BlobFS filesystem")
        }
        blobfs::Error::Invalid(m) if view.is_some() => anyhow!("{name}: {m}"),
        e => anyhow!(e).context(format!("{name}: cannot open the filesystem")),
    })
}

fn mount_error(e: std::io::Error, mp: &Path) -> anyhow::Error {
    let msg = e.to_string();
    if msg.contains("user_allow_other") {
        anyhow!(
            "cannot mount at {}: allow_other and allow_root (also implied by auto_unmount) \
             need user_allow_other in /etc/fuse.conf when not mounting as root ({})",
            mp.display(),
            msg.trim()
        )
    } else if !Path::new("/dev/fuse").exists() {
        anyhow!(
            "cannot mount at {}: FUSE is not available (no /dev/fuse; modprobe fuse)",
            mp.display()
        )
    } else {
        anyhow!("cannot mount at {}: {}", mp.display(), msg.trim())
    }
}

/// What the signal thread and the main thread share.
#[derive(Debug, Default)]
struct Ctl {
    mounted: bool,
    stop: bool,
    unmounting: bool,
}

fn request_unmount(ctl: &Mutex<Ctl>, mp: &Path) {
    let Ok(mut c) = ctl.lock() else {
        return;
    };
    if c.unmounting {
        eprintln!(
            "blobfs: already unmounting {}: the filesystem is being written back and closed",
            mp.display()
        );
        return;
    }
    c.stop = true;
    if !c.mounted {
        return;
    }
    c.unmounting = true;
    match unmount(mp, Unmount::LazyIfBusy) {
        Ok(false) => eprintln!("blobfs: unmounting {}", mp.display()),
        Ok(true) => eprintln!(
            "blobfs: {} is busy: detached it; the filesystem is closed when the last process \
             using it lets go",
            mp.display()
        ),
        Err(e) => {
            eprintln!("blobfs: cannot unmount {}: {e}", mp.display());
            c.unmounting = false;
        }
    }
}

fn serve(args: &Args, ready: &mut Ready) -> Result<()> {
    let target = Target::parse(&args.path)?;
    let opts = parse_options(&target, &args.options, false)?;
    let config = opts.config().map_err(|e| anyhow!("-o: {e}"))?;
    let mp = check_mountpoint(&args.mountpoint)?;
    let lock = target.lock(!opts.read_only, LOCK_WAIT)?;
    let fs = open_fs(&target, opts.read_only, args.snapshot.as_deref())?;

    // Signals are caught from before the mount, so a Ctrl-C while mounting still ends in a
    // clean unmount.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot catch signals")?;
    let ctl = Arc::new(Mutex::new(Ctl::default()));
    {
        let (ctl, mp) = (Arc::clone(&ctl), mp.clone());
        std::thread::Builder::new()
            .name("blobfs-signals".into())
            .spawn(move || {
                for _ in signals.forever() {
                    request_unmount(&ctl, &mp);
                }
            })
            .context("cannot start the signal thread")?;
    }

    let bf = BlobFuse::new(fs, &opts);
    let status = bf.close_status();
    let session = blobfs_fuse::session(bf, &mp, &config).map_err(|e| mount_error(e, &mp))?;
    let stop_now = match ctl.lock() {
        Ok(mut c) => {
            c.mounted = true;
            c.stop
        }
        Err(_) => false,
    };
    if stop_now {
        request_unmount(&ctl, &mp);
    }
    if !ready.is_piped() {
        eprintln!(
            "blobfs: {} mounted at {} ({}, {} threads); Ctrl-C or SIGTERM unmounts",
            target.describe(),
            mp.display(),
            if opts.read_only {
                "read-only"
            } else {
                "read-write"
            },
            opts.threads
        );
    }
    ready.send("ok");

    let run = session.run();
    let closed = status.get();
    drop(lock);
    match (run, closed) {
        (_, Some(Err(e))) => bail!("closing the filesystem failed: {e}"),
        (Err(e), _) => bail!("the FUSE session failed: {e}"),
        (Ok(()), None) => bail!("the FUSE session ended without closing the filesystem"),
        (Ok(()), Some(Ok(()))) => {
            eprintln!(
                "blobfs: {} unmounted; {} closed cleanly",
                mp.display(),
                target.describe()
            );
            Ok(())
        }
    }
}

/// The spec with a relative path made absolute (the server runs in /).
fn absolute_spec(spec: &str) -> Result<String> {
    if spec.starts_with("mem:") || spec.starts_with("pci:") {
        return Ok(spec.to_string());
    }
    let (body, query) = match spec.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (spec, String::new()),
    };
    let path = Path::new(body.strip_prefix("file:").unwrap_or(body));
    if path.is_absolute() {
        return Ok(spec.to_string());
    }
    let abs = std::env::current_dir()
        .context("cannot find the current directory")?
        .join(path);
    let abs = abs
        .to_str()
        .ok_or_else(|| anyhow!("{}: path is not valid UTF-8", abs.display()))?;
    Ok(format!("file:{abs}{query}"))
}

/// A pipe whose read end stays here and whose write end is inherited by the child.
fn ready_pipe() -> Result<(File, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot make a pipe");
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (r, w) = unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The write end must survive exec in the child (this process starts no other).
    // SAFETY: F_SETFD on a descriptor we own.
    if unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot set up the pipe");
    }
    Ok((r, w))
}

fn background(args: &Args, out: &mut dyn Write) -> Result<()> {
    // Check what can be checked here, so mistakes are reported directly.
    let target = Target::parse(&args.path)?;
    parse_options(&target, &args.options, false)?;
    let mp = mountpoint_path(&args.mountpoint)
        .with_context(|| format!("{}: no such directory", args.mountpoint.display()))?;
    let spec = absolute_spec(&args.path)?;
    let exe = std::env::current_exe().context("cannot find the blobfs executable")?;
    let (mut r, w) = ready_pipe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount").arg(&spec).arg(&mp);
    if let Some(s) = &args.snapshot {
        cmd.arg("--snapshot").arg(s);
    }
    for o in &args.options {
        cmd.arg("-o").arg(o);
    }
    cmd.arg("--foreground")
        .arg("--ready-fd")
        .arg(w.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/");
    // SAFETY: the closure runs in the child between fork and exec and calls only setsid,
    // which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the mount server")?;
    drop(w);
    let mut msg = String::new();
    let _ = r.read_to_string(&mut msg);
    match msg.trim() {
        "ok" => {
            writeln!(
                out,
                "mounted {} at {} (server pid {}); unmount with: blobfs umount {}",
                target.describe(),
                mp.display(),
                child.id(),
                mp.display()
            )?;
            Ok(())
        }
        "" => {
            let st = child.wait().context("waiting for the mount server")?;
            bail!("the mount server exited ({st}) before mounting")
        }
        m => {
            let _ = child.wait();
            bail!("{m}")
        }
    }
}

pub fn umount(args: &UmountArgs, out: &mut dyn Write) -> Result<()> {
    let mp = mountpoint_path(&args.mountpoint)
        .with_context(|| format!("{}: no such directory", args.mountpoint.display()))?;
    let Some(entry) = find_mount(&mp)? else {
        bail!("{}: not mounted", mp.display());
    };
    if entry.fstype != FSTYPE {
        bail!(
            "{}: not a BlobFS mount (it is {} from {}); use umount(8)",
            mp.display(),
            entry.fstype,
            entry.source
        );
    }
    let how = if args.lazy {
        Unmount::Lazy
    } else {
        Unmount::Strict
    };
    unmount(&mp, how).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) || e.kind() == std::io::ErrorKind::ResourceBusy {
            anyhow!(
                "{}: busy (a process has files open or its working directory there); close \
                 them, or use --lazy",
                mp.display()
            )
        } else {
            anyhow!("{}: cannot unmount: {e}", mp.display())
        }
    })?;
    if args.lazy {
        writeln!(
            out,
            "detached {}; the filesystem is closed when the last process using it lets go",
            mp.display()
        )?;
        return Ok(());
    }
    // The server writes back and closes after the kernel lets go; it holds the image's
    // lock until it is done.
    if !args.no_wait && Path::new(&entry.source).exists() {
        if let Ok(t) = Target::parse(&entry.source) {
            if !t.wait_unlocked(Duration::from_secs(60)) {
                eprintln!(
                    "blobfs: {}: the server is still closing the filesystem after 60 s",
                    entry.source
                );
            }
        }
    }
    writeln!(out, "unmounted {}", mp.display())?;
    Ok(())
}

/// `mount.fuse.blobfs SOURCE DIR [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]`: what mount(8)
/// runs for `-t fuse.blobfs` and fstab lines. Mounts in the background and returns once
/// mounted, quietly unless `-v`. `-f` (fake) does nothing, `-s` (sloppy) drops unknown
/// options, `-n` is accepted; SOURCE may be written `blobfs#SOURCE` as in old FUSE fstab
/// lines.
pub fn helper(argv: &[OsString], out: &mut dyn Write) -> Result<()> {
    let usage = "usage: mount.fuse.blobfs IMAGE_OR_DEVICE MOUNTPOINT [-sfnv] [-o OPTIONS]";
    let mut pos: Vec<String> = Vec::new();
    let mut options = Vec::new();
    let (mut fake, mut sloppy, mut verbose) = (false, false, false);
    let mut it = argv.iter().map(|a| {
        a.to_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("argument {a:?} is not valid UTF-8"))
    });
    while let Some(a) = it.next() {
        let a = a?;
        let mut value = |flag: &str, rest: &str| -> Result<String> {
            if !rest.is_empty() {
                return Ok(rest.to_string());
            }
            it.next()
                .ok_or_else(|| anyhow!("{flag} needs a value; {usage}"))?
        };
        if let Some(rest) = a.strip_prefix("-o") {
            options.push(value("-o", rest)?);
        } else if let Some(rest) = a.strip_prefix("-t") {
            let t = value("-t", rest)?;
            if !matches!(t.as_str(), "fuse.blobfs" | "blobfs" | "fuse") {
                bail!("-t {t}: this helper mounts fuse.blobfs only");
            }
        } else if a.starts_with("-N") {
            bail!("-N (mount namespaces) is not supported");
        } else if a.len() > 1 && a.starts_with('-') {
            for c in a.chars().skip(1) {
                match c {
                    's' => sloppy = true,
                    'f' => fake = true,
                    'v' => verbose = true,
                    'n' => {}
                    'h' => {
                        writeln!(out, "{usage}\n\n{MOUNT_OPTIONS_HELP}")?;
                        return Ok(());
                    }
                    _ => bail!("unknown flag -{c}; {usage}"),
                }
            }
        } else {
            pos.push(a);
        }
    }
    let [source, dir] = <[String; 2]>::try_from(pos).map_err(|_| anyhow!("{usage}"))?;
    let source = source
        .strip_prefix("blobfs#")
        .unwrap_or(&source)
        .to_string();
    let target = Target::parse(&source)?;
    let options = if sloppy {
        // Keep only what parses.
        let kept: Vec<String> = options
            .join(",")
            .split(',')
            .filter(|o| {
                !matches!(
                    MountOptions::default().apply(o),
                    Err(OptionError::Unknown(_))
                )
            })
            .map(str::to_string)
            .collect();
        vec![kept.join(",")]
    } else {
        options
    };
    parse_options(&target, &options, false)?;
    if fake {
        return Ok(());
    }
    let args = Args {
        path: source,
        mountpoint: PathBuf::from(dir),
        options: options.into_iter().filter(|o| !o.is_empty()).collect(),
        foreground: false,
        background: true,
        ready_fd: None,
        snapshot: None,
    };
    if verbose {
        background(&args, out)
    } else {
        background(&args, &mut std::io::sink())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_become_absolute() {
        let here = std::env::current_dir().unwrap();
        assert_eq!(absolute_spec("mem:64M").unwrap(), "mem:64M");
        assert_eq!(
            absolute_spec("pci:0000:00:04.0").unwrap(),
            "pci:0000:00:04.0"
        );
        assert_eq!(absolute_spec("/x/y.img").unwrap(), "/x/y.img");
        assert_eq!(
            absolute_spec("y.img?lba=512").unwrap(),
            format!("file:{}/y.img?lba=512", here.display())
        );
        assert_eq!(
            absolute_spec("file:d/y.img").unwrap(),
            format!("file:{}/d/y.img", here.display())
        );
    }

    #[test]
    fn options_are_checked() {
        let t = Target::parse("mem:64M").unwrap();
        assert!(parse_options(&t, &["ro,allow_other".into()], false).is_ok());
        assert!(parse_options(&t, &["bogus".into()], false).is_err());
        assert!(parse_options(&t, &["bogus,ro".into()], true).is_ok());
        assert!(parse_options(&t, &["allow_other,allow_root".into()], false).is_err());
        assert_eq!(
            parse_options(&t, &["ro".into()], false).unwrap().fsname,
            "mem:64M"
        );
    }
}
