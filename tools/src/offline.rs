//! What the offline commands (dump, df, ls, stat, cp, export, import) share: opening an
//! unmounted image under its lock, paths inside a BlobFS filesystem, mode and time
//! formatting, and progress bars on a terminal.

use crate::device::{PathKind, StoreLock, Target, LOCK_WAIT};
use anyhow::{anyhow, bail, Context, Result};
use blobfs::inode::{S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, S_IFSOCK};
use blobfs::{Attr, FileSystem, FsOptions, Ino, Kind, Time, ROOT_INO};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::Duration;

/// An image (file or block device) locked for an offline command: shared for commands
/// that only read, exclusive for those that write, so a mounted image is refused.
#[derive(Debug)]
pub struct Locked {
    pub target: Target,
    _lock: Option<StoreLock>,
}

impl Locked {
    /// Parses `spec` and locks the image. `mem:` is refused: it would be empty.
    pub fn new(spec: &str, exclusive: bool) -> Result<Locked> {
        let target = Target::parse(spec)?;
        if let Target::Mem { spec, .. } = &target {
            bail!(
                "{spec}: a mem: device starts empty every time; offline commands work on an \
                 image file or a block device"
            );
        }
        if target.path_kind()? == PathKind::Missing {
            bail!("{}: no such file or device", target.describe());
        }
        let lock = target.lock(exclusive, LOCK_WAIT)?;
        Ok(Locked {
            target,
            _lock: lock,
        })
    }

    pub fn name(&self) -> String {
        self.target.describe()
    }

    /// Opens the BlobFS filesystem on the image (read-only: nothing is written, not even
    /// a recovery).
    pub fn open_fs(&self, read_only: bool) -> Result<FileSystem> {
        let name = self.name();
        let dev = self.target.open_store_device(read_only)?;
        FileSystem::open(
            dev,
            FsOptions {
                read_only,
                ..FsOptions::default()
            },
        )
        .map_err(|e| match e {
            blobfs::Error::NotBlobfs(_) => anyhow!(
                "{name}: {e}; these commands need a BlobFS filesystem (`blobfs mkfs` makes \
                 one; `blobfs dump` shows a bare blobstore)"
            ),
            e => anyhow!(e).context(format!("{name}: cannot open the filesystem")),
        })
    }
}

/// The components of a path inside the filesystem ("/a/b/" -> ["a", "b"]). Empty
/// components and "." are dropped; ".." is kept (lookup resolves it).
pub fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect()
}

/// Joins components to an absolute path for messages.
pub fn display_abs(comps: &[Vec<u8>]) -> String {
    if comps.is_empty() {
        return "/".into();
    }
    let mut s = String::new();
    for c in comps {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(c));
    }
    s
}

/// Joins components to a relative path ("" for none).
pub fn display_rel(comps: &[Vec<u8>]) -> String {
    let parts: Vec<String> = comps
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    parts.join("/")
}

/// What a path in the image resolves to.
#[derive(Debug)]
pub enum Resolved {
    /// It exists: its parent directory and its attributes (the root is its own parent).
    Found { parent: Ino, attr: Attr },
    /// Its parent directory exists, the last component does not.
    Missing { parent: Ino, name: Vec<u8> },
}

/// Resolves a path in the filesystem without following symlinks. An error names the
/// path and what went wrong (a missing directory on the way, a non-directory).
pub fn resolve(fs: &FileSystem, image: &str, comps: &[Vec<u8>]) -> Result<Resolved> {
    let mut cur = ROOT_INO;
    let mut parent = ROOT_INO;
    let mut attr = fs
        .getattr(ROOT_INO)
        .with_context(|| format!("{image}: cannot read the root directory"))?;
    for (i, name) in comps.iter().enumerate() {
        if attr.kind != Kind::Dir {
            bail!(
                "{image}:{}: not a directory",
                display_abs(comps.get(..i).unwrap_or_default())
            );
        }
        match fs.lookup(cur, name) {
            Ok(a) => {
                parent = if name == b".." {
                    fs.parent_of(a.ino).unwrap_or(ROOT_INO)
                } else {
                    cur
                };
                cur = a.ino;
                attr = a;
            }
            Err(blobfs::Error::NotFound) if i + 1 == comps.len() => {
                return Ok(Resolved::Missing {
                    parent: cur,
                    name: name.clone(),
                });
            }
            Err(blobfs::Error::NotFound) => {
                bail!(
                    "{image}:{}: no such file or directory",
                    display_abs(comps.get(..=i).unwrap_or_default())
                )
            }
            Err(e) => {
                return Err(anyhow!(e).context(format!(
                    "{image}:{}",
                    display_abs(comps.get(..=i).unwrap_or_default())
                )))
            }
        }
    }
    Ok(Resolved::Found { parent, attr })
}

/// Resolves a path that must exist.
pub fn resolve_existing(fs: &FileSystem, image: &str, comps: &[Vec<u8>]) -> Result<Attr> {
    match resolve(fs, image, comps)? {
        Resolved::Found { attr, .. } => Ok(attr),
        Resolved::Missing { .. } => {
            bail!("{image}:{}: no such file or directory", display_abs(comps))
        }
    }
}

/// The file type bits of a kind.
pub fn type_bits(kind: Kind) -> u32 {
    match kind {
        Kind::File => S_IFREG,
        Kind::Dir => S_IFDIR,
        Kind::Symlink => S_IFLNK,
        Kind::Fifo => S_IFIFO,
        Kind::Socket => S_IFSOCK,
        Kind::CharDev => S_IFCHR,
        Kind::BlockDev => S_IFBLK,
    }
}

/// A name for a kind, as in JSON output.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::File => "file",
        Kind::Dir => "dir",
        Kind::Symlink => "symlink",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
        Kind::CharDev => "char_device",
        Kind::BlockDev => "block_device",
    }
}

/// `ls -l`'s mode string: `drwxr-xr-x`, with s/S/t/T for set-id and sticky bits.
pub fn mode_string(kind: Kind, perm: u32) -> String {
    let t = match kind {
        Kind::File => '-',
        Kind::Dir => 'd',
        Kind::Symlink => 'l',
        Kind::Fifo => 'p',
        Kind::Socket => 's',
        Kind::CharDev => 'c',
        Kind::BlockDev => 'b',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    let bit = |b: u32, c: char| if perm & b != 0 { c } else { '-' };
    let special = |x: bool, set: bool, lower: char, upper: char, none: char| match (set, x) {
        (true, true) => lower,
        (true, false) => upper,
        (false, true) => none,
        (false, false) => '-',
    };
    s.push(bit(0o400, 'r'));
    s.push(bit(0o200, 'w'));
    s.push(special(
        perm & 0o100 != 0,
        perm & 0o4000 != 0,
        's',
        'S',
        'x',
    ));
    s.push(bit(0o040, 'r'));
    s.push(bit(0o020, 'w'));
    s.push(special(
        perm & 0o010 != 0,
        perm & 0o2000 != 0,
        's',
        'S',
        'x',
    ));
    s.push(bit(0o004, 'r'));
    s.push(bit(0o002, 'w'));
    s.push(special(
        perm & 0o001 != 0,
        perm & 0o1000 != 0,
        't',
        'T',
        'x',
    ));
    s
}

/// Splits a device number as BlobFS stores it (the kernel's 32-bit `new_encode_dev`
/// form, which FUSE hands over) into major and minor.
pub fn rdev_split(rdev: u32) -> (u32, u32) {
    (
        (rdev & 0xfff00) >> 8,
        (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
    )
}

/// The inverse of [`rdev_split`] (majors above 4095 and minors above 2^20 do not fit and
/// are cut).
pub fn rdev_join(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// Seconds and nanoseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (UTC);
/// times outside years 0..=9999 as `SEC.NSEC`.
pub fn rfc3339(t: Time) -> String {
    match civil(t.sec) {
        Some((y, mo, d, h, mi, s)) => {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:09}Z", t.nsec)
        }
        None => format!("{}.{:09}", t.sec, t.nsec),
    }
}

/// UTC calendar fields of a Unix time, for years 0..=9999.
fn civil(sec: i64) -> Option<(i64, u32, u32, u32, u32, u32)> {
    // Years 0 and 9999 bound the range, so nothing below can overflow.
    if !(-62_167_219_200..=253_402_300_799).contains(&sec) {
        return None;
    }
    let days = sec.div_euclid(86_400);
    let rem = sec.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = if m <= 2 { y + 1 } else { y };
    Some((
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    ))
}

/// Local time of `t` as `strftime(fmt)`; falls back to UTC RFC 3339.
pub fn local_time(t: Time, fmt: &str) -> String {
    let Ok(cfmt) = std::ffi::CString::new(fmt) else {
        return rfc3339(t);
    };
    let secs: libc::time_t = t.sec;
    // SAFETY: `tm` is plain data that localtime_r fills in; both pointers are valid for
    // the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return rfc3339(t);
    }
    let mut buf = [0u8; 128];
    // SAFETY: strftime writes at most `buf.len()` bytes into `buf` and returns how many;
    // the format is NUL-terminated and `tm` was filled in by localtime_r.
    let n = unsafe {
        libc::strftime(
            buf.as_mut_ptr().cast::<libc::c_char>(),
            buf.len(),
            cfmt.as_ptr(),
            &tm,
        )
    };
    if n == 0 {
        return rfc3339(t);
    }
    String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned()
}

/// `stat(1)`-style local time with nanoseconds and zone offset.
pub fn local_time_full(t: Time) -> String {
    let date = local_time(t, "%Y-%m-%d %H:%M:%S");
    let zone = local_time(t, "%z");
    format!("{date}.{:09} {zone}", t.nsec)
}

/// Lowercase hex of bytes.
pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// A progress bar on stderr, shown only when stderr is a terminal (indicatif hides its
/// stderr target otherwise, so pipes and tests see nothing). Clones draw the same bar.
#[derive(Clone, Debug)]
pub struct Progress {
    pb: Option<ProgressBar>,
}

impl Progress {
    /// A bar counting bytes towards `total` (a spinner when the total is unknown).
    pub fn new(what: &str, total: Option<u64>) -> Progress {
        let target = ProgressDrawTarget::stderr();
        if target.is_hidden() {
            return Progress::hidden();
        }
        let pb = ProgressBar::with_draw_target(total, target);
        let template = if total.is_some() {
            "{prefix} [{bar:20}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}"
        } else {
            "{spinner} {prefix} {bytes} {binary_bytes_per_sec} {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_prefix(what.to_string());
        pb.enable_steady_tick(Duration::from_millis(200));
        Progress { pb: Some(pb) }
    }

    /// No bar at all.
    pub fn hidden() -> Progress {
        Progress { pb: None }
    }

    /// Whether anything is drawn (worth computing totals for).
    pub fn visible(&self) -> bool {
        self.pb.is_some()
    }

    pub fn bytes(&self, n: u64) {
        if let Some(pb) = &self.pb {
            pb.inc(n);
        }
    }

    /// Shows how many entries were done.
    pub fn entries(&self, n: u64) {
        if let Some(pb) = &self.pb {
            pb.set_message(format!("{n} entries"));
        }
    }

    /// Runs `f` (which prints to stderr) with the bar out of the way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.pb {
            Some(pb) => pb.suspend(f),
            None => f(),
        }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        if let Some(pb) = &self.pb {
            pb.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(mode_string(Kind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(Kind::File, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(Kind::File, 0o2644), "-rw-r-Sr--");
        assert_eq!(mode_string(Kind::Dir, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(Kind::Symlink, 0o777), "lrwxrwxrwx");
        assert_eq!(mode_string(Kind::Fifo, 0o1600), "prw------T");
    }

    #[test]
    fn times() {
        assert_eq!(
            rfc3339(Time { sec: 0, nsec: 5 }),
            "1970-01-01T00:00:00.000000005Z"
        );
        assert_eq!(
            rfc3339(Time {
                sec: 1_700_000_000,
                nsec: 0
            }),
            "2023-11-14T22:13:20.000000000Z"
        );
        assert_eq!(
            rfc3339(Time { sec: -1, nsec: 0 }),
            "1969-12-31T23:59:59.000000000Z"
        );
        assert_eq!(
            rfc3339(Time {
                sec: 951_782_400,
                nsec: 0
            }),
            "2000-02-29T00:00:00.000000000Z"
        );
        assert_eq!(
            rfc3339(Time {
                sec: i64::MAX,
                nsec: 1
            }),
            format!("{}.000000001", i64::MAX)
        );
        assert_eq!(
            rfc3339(Time {
                sec: i64::MIN,
                nsec: 0
            }),
            format!("{}.000000000", i64::MIN)
        );
    }

    #[test]
    fn paths_and_devices() {
        assert_eq!(
            components(b"/a//b/./c/"),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert!(components(b"/").is_empty());
        assert_eq!(display_abs(&components(b"x/y")), "/x/y");
        assert_eq!(display_abs(&[]), "/");
        for (ma, mi) in [(8, 1), (259, 65536), (4095, 1 << 19), (0, 0)] {
            assert_eq!(rdev_split(rdev_join(ma, mi)), (ma, mi));
        }
        // /dev/null is 1:3.
        assert_eq!(rdev_join(1, 3), 0x103);
    }
}
