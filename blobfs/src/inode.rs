//! Inodes and directory entries as blob xattrs (the BlobFS on-disk format, version 1).
//!
//! Every file, directory and symlink is one blob; the inode number is the blob id and the
//! root directory is blob 1. All filesystem metadata lives in *internal* xattrs of the
//! blobs (user xattrs are the file's own `user.*`, `trusted.*`... attributes):
//!
//! | key (bytes) | on | value |
//! |---|---|---|
//! | `00 69` ("\0i") | every inode | the inode record below |
//! | `00 6c` ("\0l") | symlinks | the link target |
//! | `00 6f` + ino as 8 LE bytes ("\0o...") | the root directory | empty: an orphan (unlinked while open), deleted at the next mount |
//! | `00 66` ("\0f") | the root directory | filesystem marker: `BLOBFS01` |
//! | a file name (1..=255 bytes, no `/`, no NUL) | directories | a directory entry: ino u64, type u8 |
//!
//! Names never start with NUL, so the reserved keys never clash with entries.
//!
//! Inode record (88 bytes, little-endian):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 2 | version (1) |
//! | 2 | 2 | flags (0) |
//! | 4 | 4 | mode (file type and permission bits, as in `st_mode`) |
//! | 8 | 4 | uid |
//! | 12 | 4 | gid |
//! | 16 | 4 | nlink |
//! | 20 | 4 | rdev |
//! | 24 | 8 | size in bytes |
//! | 32 | 8 | atime seconds (i64) |
//! | 40 | 4 | atime nanoseconds |
//! | 44 | 4 | mtime nanoseconds |
//! | 48 | 8 | mtime seconds (i64) |
//! | 56 | 8 | ctime seconds (i64) |
//! | 64 | 4 | ctime nanoseconds |
//! | 68 | 4 | crtime nanoseconds |
//! | 72 | 8 | crtime seconds (i64) |
//! | 80 | 8 | parent directory (directories only; 0 otherwise) |

use crate::error::{Error, Result};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Inode number (= blob id).
pub type Ino = u64;

/// The root directory's inode number (blob 1, also FUSE's root id).
pub const ROOT_INO: Ino = 1;

pub const KEY_INODE: &[u8] = b"\0i";
pub const KEY_SYMLINK: &[u8] = b"\0l";
pub const KEY_MARKER: &[u8] = b"\0f";
pub const MARKER: &[u8] = b"BLOBFS01";
const ORPHAN_PREFIX: &[u8] = b"\0o";

/// The key of an orphan record on the root directory.
pub fn orphan_key(ino: Ino) -> Vec<u8> {
    let mut k = ORPHAN_PREFIX.to_vec();
    k.extend_from_slice(&ino.to_le_bytes());
    k
}

/// The inode number of an orphan key, if it is one.
pub fn parse_orphan_key(k: &[u8]) -> Option<Ino> {
    let rest = k.strip_prefix(ORPHAN_PREFIX)?;
    let b: [u8; 8] = rest.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// Longest file name.
pub const NAME_MAX: usize = 255;
/// Longest symlink target.
pub const SYMLINK_MAX: usize = 4095;

pub const INODE_LEN: usize = 88;
const INODE_VERSION: u16 = 1;

pub const S_IFMT: u32 = 0o170000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFIFO: u32 = 0o010000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;

/// The type of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & S_IFMT {
            S_IFREG => Kind::File,
            S_IFDIR => Kind::Dir,
            S_IFLNK => Kind::Symlink,
            S_IFIFO => Kind::Fifo,
            S_IFSOCK => Kind::Socket,
            S_IFCHR => Kind::CharDev,
            S_IFBLK => Kind::BlockDev,
            _ => return None,
        })
    }

    pub fn mode_bits(self) -> u32 {
        match self {
            Kind::File => S_IFREG,
            Kind::Dir => S_IFDIR,
            Kind::Symlink => S_IFLNK,
            Kind::Fifo => S_IFIFO,
            Kind::Socket => S_IFSOCK,
            Kind::CharDev => S_IFCHR,
            Kind::BlockDev => S_IFBLK,
        }
    }

    /// The `d_type` code stored in directory entries.
    pub fn dtype(self) -> u8 {
        match self {
            Kind::Fifo => 1,
            Kind::CharDev => 2,
            Kind::Dir => 4,
            Kind::BlockDev => 6,
            Kind::File => 8,
            Kind::Symlink => 10,
            Kind::Socket => 12,
        }
    }

    pub fn from_dtype(t: u8) -> Option<Kind> {
        Some(match t {
            1 => Kind::Fifo,
            2 => Kind::CharDev,
            4 => Kind::Dir,
            6 => Kind::BlockDev,
            8 => Kind::File,
            10 => Kind::Symlink,
            12 => Kind::Socket,
            _ => return None,
        })
    }
}

/// A point in time as stored (seconds since the epoch, may be negative, and nanoseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

impl Time {
    pub fn now() -> Time {
        Time::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Time {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Time {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let mut sec = -(d.as_secs() as i64);
                let mut nsec = d.subsec_nanos();
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                Time { sec, nsec }
            }
        }
    }

    pub fn to_system(self) -> SystemTime {
        if self.sec >= 0 {
            UNIX_EPOCH + Duration::new(self.sec as u64, self.nsec)
        } else {
            UNIX_EPOCH - Duration::from_secs(self.sec.unsigned_abs())
                + Duration::from_nanos(u64::from(self.nsec))
        }
    }
}

/// Inode attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InodeAttr {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub rdev: u32,
    pub size: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub crtime: Time,
    /// Parent directory (directories only).
    pub parent: Ino,
}

impl InodeAttr {
    /// A new inode of `mode` owned by `uid`/`gid`, all times now.
    pub fn new(mode: u32, uid: u32, gid: u32) -> InodeAttr {
        let now = Time::now();
        InodeAttr {
            mode,
            uid,
            gid,
            nlink: 1,
            rdev: 0,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            parent: 0,
        }
    }

    pub fn kind(&self) -> Kind {
        Kind::from_mode(self.mode).unwrap_or(Kind::File)
    }

    pub fn encode(&self) -> [u8; INODE_LEN] {
        let mut b = [0u8; INODE_LEN];
        b[0..2].copy_from_slice(&INODE_VERSION.to_le_bytes());
        b[4..8].copy_from_slice(&self.mode.to_le_bytes());
        b[8..12].copy_from_slice(&self.uid.to_le_bytes());
        b[12..16].copy_from_slice(&self.gid.to_le_bytes());
        b[16..20].copy_from_slice(&self.nlink.to_le_bytes());
        b[20..24].copy_from_slice(&self.rdev.to_le_bytes());
        b[24..32].copy_from_slice(&self.size.to_le_bytes());
        b[32..40].copy_from_slice(&self.atime.sec.to_le_bytes());
        b[40..44].copy_from_slice(&self.atime.nsec.to_le_bytes());
        b[44..48].copy_from_slice(&self.mtime.nsec.to_le_bytes());
        b[48..56].copy_from_slice(&self.mtime.sec.to_le_bytes());
        b[56..64].copy_from_slice(&self.ctime.sec.to_le_bytes());
        b[64..68].copy_from_slice(&self.ctime.nsec.to_le_bytes());
        b[68..72].copy_from_slice(&self.crtime.nsec.to_le_bytes());
        b[72..80].copy_from_slice(&self.crtime.sec.to_le_bytes());
        b[80..88].copy_from_slice(&self.parent.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<InodeAttr> {
        if b.len() != INODE_LEN {
            return Err(Error::Corruption(format!(
                "inode record of {} bytes",
                b.len()
            )));
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        if u16_at(0) != INODE_VERSION {
            return Err(Error::Corruption(format!(
                "inode record version {}",
                u16_at(0)
            )));
        }
        let t = |s: usize, n: usize| -> Result<Time> {
            let nsec = u32_at(n);
            if nsec >= 1_000_000_000 {
                return Err(Error::Corruption(format!("inode time with {nsec} ns")));
            }
            Ok(Time {
                sec: u64_at(s) as i64,
                nsec,
            })
        };
        let a = InodeAttr {
            mode: u32_at(4),
            uid: u32_at(8),
            gid: u32_at(12),
            nlink: u32_at(16),
            rdev: u32_at(20),
            size: u64_at(24),
            atime: t(32, 40)?,
            mtime: t(48, 44)?,
            ctime: t(56, 64)?,
            crtime: t(72, 68)?,
            parent: u64_at(80),
        };
        if Kind::from_mode(a.mode).is_none() {
            return Err(Error::Corruption(format!("inode mode {:#o}", a.mode)));
        }
        Ok(a)
    }
}

/// A directory entry's value: the inode and its type.
pub fn encode_entry(ino: Ino, kind: Kind) -> [u8; 9] {
    let mut b = [0u8; 9];
    b[..8].copy_from_slice(&ino.to_le_bytes());
    b[8] = kind.dtype();
    b
}

pub fn decode_entry(b: &[u8]) -> Result<(Ino, Kind)> {
    if b.len() != 9 {
        return Err(Error::Corruption(format!(
            "directory entry of {} bytes",
            b.len()
        )));
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    let ino = u64::from_le_bytes(a);
    let kind = Kind::from_dtype(b[8])
        .ok_or_else(|| Error::Corruption(format!("directory entry type {}", b[8])))?;
    if ino == 0 {
        return Err(Error::Corruption("directory entry to inode 0".into()));
    }
    Ok((ino, kind))
}

/// Checks a name for a directory entry.
pub fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Error::Invalid(format!(
            "bad file name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    if name.len() > NAME_MAX {
        return Err(Error::NameTooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InodeAttr {
        InodeAttr {
            mode: S_IFREG | 0o644,
            uid: 1000,
            gid: 100,
            nlink: 2,
            rdev: 0,
            size: 0x1_0000_0001,
            atime: Time { sec: 1, nsec: 2 },
            mtime: Time { sec: 3, nsec: 4 },
            ctime: Time { sec: -5, nsec: 6 },
            crtime: Time { sec: 7, nsec: 8 },
            parent: 9,
        }
    }

    #[test]
    fn golden_bytes() {
        let b = sample().encode();
        let mut e = Vec::new();
        e.extend_from_slice(&1u16.to_le_bytes());
        e.extend_from_slice(&0u16.to_le_bytes());
        for v in [S_IFREG | 0o644, 1000, 100, 2, 0] {
            e.extend_from_slice(&v.to_le_bytes());
        }
        e.extend_from_slice(&0x1_0000_0001u64.to_le_bytes());
        e.extend_from_slice(&1i64.to_le_bytes());
        e.extend_from_slice(&2u32.to_le_bytes());
        e.extend_from_slice(&4u32.to_le_bytes());
        e.extend_from_slice(&3i64.to_le_bytes());
        e.extend_from_slice(&(-5i64).to_le_bytes());
        e.extend_from_slice(&6u32.to_le_bytes());
        e.extend_from_slice(&8u32.to_le_bytes());
        e.extend_from_slice(&7i64.to_le_bytes());
        e.extend_from_slice(&9u64.to_le_bytes());
        assert_eq!(&b[..], &e[..]);
        assert_eq!(InodeAttr::decode(&b).unwrap(), sample());
        assert_eq!(encode_entry(0x0102, Kind::Dir), [2, 1, 0, 0, 0, 0, 0, 0, 4]);
        assert_eq!(orphan_key(3), b"\0o\x03\0\0\0\0\0\0\0");
        assert_eq!(parse_orphan_key(&orphan_key(77)), Some(77));
    }

    #[test]
    fn bad_records() {
        assert!(InodeAttr::decode(&[0u8; 10]).is_err());
        let mut b = sample().encode();
        b[0] = 9;
        assert!(InodeAttr::decode(&b).is_err());
        let mut b = sample().encode();
        b[40..44].copy_from_slice(&2_000_000_000u32.to_le_bytes());
        assert!(InodeAttr::decode(&b).is_err());
        let mut b = sample().encode();
        b[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert!(InodeAttr::decode(&b).is_err());
        assert!(decode_entry(&[0; 9]).is_err());
        assert!(decode_entry(&[1, 0, 0, 0, 0, 0, 0, 0, 99]).is_err());
        assert!(decode_entry(&[1]).is_err());
        assert_eq!(
            decode_entry(&encode_entry(5, Kind::Symlink)).unwrap(),
            (5, Kind::Symlink)
        );
    }

    #[test]
    fn names() {
        assert!(check_name(b"ok").is_ok());
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(check_name(bad).is_err());
        }
        assert!(matches!(check_name(&[b'x'; 256]), Err(Error::NameTooLong)));
        assert!(check_name(&[b'x'; 255]).is_ok());
    }

    #[test]
    fn times() {
        let t = Time { sec: -3, nsec: 5 };
        assert_eq!(Time::from_system(t.to_system()), t);
        let n = Time::now();
        assert_eq!(Time::from_system(n.to_system()), n);
    }
}
