//! Mount options: the `-o` strings of `blobfs mount`, `mount(8)` and fstab, and the fuser
//! configuration built from them.

use fuser::{Config, MountOption, SessionACL};
use std::time::Duration;
use thiserror::Error;

/// A mount option that cannot be honoured.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("unknown mount option {0:?}")]
    Unknown(String),
    #[error("mount option {0:?} needs a value")]
    NeedsValue(String),
    #[error("mount option {0:?}: {1}")]
    BadValue(String, String),
    #[error("allow_other and allow_root exclude each other")]
    AllowBoth,
}

/// How to mount: the options of `blobfs mount -o ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// Mount read-only (the filesystem is opened read-only too).
    pub read_only: bool,
    /// Let every user reach the mount (the kernel still checks permissions).
    pub allow_other: bool,
    /// Let root reach the mount besides the owner.
    pub allow_root: bool,
    /// Have `fusermount3` unmount when the serving process dies. Needs `allow_other` or
    /// `allow_root`; `allow_root` is implied when neither is given.
    pub auto_unmount: bool,
    /// The mount's source as `/proc/mounts` shows it (default: the image path).
    pub fsname: String,
    /// Request threads (fuser event loops).
    pub threads: usize,
    /// How long the kernel may cache attributes and directory entries.
    pub ttl: Duration,
    /// Kernel mount flags given explicitly: `Some(true)` for `dev`, `Some(false)` for
    /// `nodev`, and so on (FUSE defaults to nodev, nosuid).
    pub dev: Option<bool>,
    pub suid: Option<bool>,
    pub exec: Option<bool>,
    pub atime: Option<bool>,
    pub sync: Option<bool>,
    pub dirsync: bool,
    /// Let the kernel cache writes (FUSE_WRITEBACK_CACHE) and send them in big batches.
    /// On by default; the session also lifts the kernel's strict dirty-page cap of the
    /// mount (see docs/design.md).
    pub writeback_cache: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: false,
            allow_other: false,
            allow_root: false,
            auto_unmount: false,
            fsname: "blobfs".into(),
            threads: 4,
            ttl: Duration::from_secs(1),
            dev: None,
            suid: None,
            exec: None,
            atime: None,
            sync: None,
            dirsync: false,
            writeback_cache: true,
        }
    }
}

/// Options `mount(8)` and fstab may pass that mean nothing to a FUSE mount (or to BlobFS):
/// accepted and ignored.
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "iversion",
    "noiversion",
    "mand",
    "nomand",
    "silent",
    "loud",
    "default_permissions",
];

impl MountOptions {
    /// Applies one `-o` argument: options separated by commas, later ones winning.
    pub fn apply(&mut self, opts: &str) -> Result<(), OptionError> {
        for opt in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            self.apply_one(opt)?;
        }
        Ok(())
    }

    fn apply_one(&mut self, opt: &str) -> Result<(), OptionError> {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let flag = |v: Option<&str>| -> Result<(), OptionError> {
            match v {
                None => Ok(()),
                Some(_) => Err(OptionError::BadValue(opt.into(), "takes no value".into())),
            }
        };
        match key {
            "ro" => {
                flag(value)?;
                self.read_only = true;
            }
            "rw" => {
                flag(value)?;
                self.read_only = false;
            }
            "allow_other" => {
                flag(value)?;
                self.allow_other = true;
            }
            "allow_root" => {
                flag(value)?;
                self.allow_root = true;
            }
            "auto_unmount" => {
                flag(value)?;
                self.auto_unmount = true;
            }
            "fsname" => {
                let v = value.ok_or_else(|| OptionError::NeedsValue(key.into()))?;
                if v.is_empty() || v.contains(|c: char| c == ',' || c.is_whitespace()) {
                    return Err(OptionError::BadValue(
                        opt.into(),
                        "must be non-empty, without commas or blanks".into(),
                    ));
                }
                self.fsname = v.into();
            }
            // The type is always fuse.blobfs.
            "subtype" => {}
            "threads" => {
                let v = value.ok_or_else(|| OptionError::NeedsValue(key.into()))?;
                self.threads = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| OptionError::BadValue(opt.into(), "1 to 64".into()))?;
            }
            "dev" | "nodev" => {
                flag(value)?;
                self.dev = Some(key == "dev");
            }
            "suid" | "nosuid" => {
                flag(value)?;
                self.suid = Some(key == "suid");
            }
            "exec" | "noexec" => {
                flag(value)?;
                self.exec = Some(key == "exec");
            }
            "atime" | "noatime" => {
                flag(value)?;
                self.atime = Some(key == "atime");
            }
            "sync" | "async" => {
                flag(value)?;
                self.sync = Some(key == "sync");
            }
            "dirsync" => {
                flag(value)?;
                self.dirsync = true;
            }
            "writeback_cache" | "no_writeback_cache" => {
                flag(value)?;
                self.writeback_cache = key == "writeback_cache";
            }
            k if k.starts_with("x-") || k == "comment" => {}
            k if IGNORED.contains(&k) && value.is_none() => {}
            _ => return Err(OptionError::Unknown(opt.into())),
        }
        Ok(())
    }

    /// The fuser configuration for these options.
    pub fn config(&self) -> Result<Config, OptionError> {
        if self.allow_other && self.allow_root {
            return Err(OptionError::AllowBoth);
        }
        let mut o = vec![
            MountOption::DefaultPermissions,
            MountOption::FSName(self.fsname.clone()),
            // fuser's own Subtype reaches only fusermount3; as a kernel option the direct
            // mount(2) path (root) gets it too, and fusermount3 takes it as its own.
            MountOption::CUSTOM("subtype=blobfs".into()),
        ];
        if self.read_only {
            o.push(MountOption::RO);
        }
        let pairs = [
            (self.dev, MountOption::Dev, MountOption::NoDev),
            (self.suid, MountOption::Suid, MountOption::NoSuid),
            (self.exec, MountOption::Exec, MountOption::NoExec),
            (self.atime, MountOption::Atime, MountOption::NoAtime),
            (self.sync, MountOption::Sync, MountOption::Async),
        ];
        for (v, yes, no) in pairs {
            match v {
                Some(true) => o.push(yes),
                Some(false) => o.push(no),
                None => {}
            }
        }
        if self.dirsync {
            o.push(MountOption::DirSync);
        }
        if self.auto_unmount {
            o.push(MountOption::AutoUnmount);
        }
        let mut c = Config::default();
        c.mount_options = o;
        c.acl = if self.allow_other {
            SessionACL::All
        } else if self.allow_root || self.auto_unmount {
            // fusermount3 needs allow_other or allow_root for auto_unmount.
            SessionACL::RootAndOwner
        } else {
            SessionACL::Owner
        };
        c.n_threads = Some(self.threads.max(1));
        c.clone_fd = true;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_mount_passes() {
        let mut m = MountOptions::default();
        m.apply("rw,noatime,nodev,nosuid,_netdev,nofail,x-systemd.automount,defaults")
            .unwrap();
        assert!(!m.read_only);
        assert_eq!(m.atime, Some(false));
        assert_eq!(m.dev, Some(false));
        m.apply("ro").unwrap();
        m.apply("allow_other,auto_unmount").unwrap();
        assert!(m.read_only && m.allow_other && m.auto_unmount);
        m.apply("rw,exec,noexec").unwrap();
        assert!(!m.read_only);
        assert_eq!(m.exec, Some(false));
        assert!(m.apply("frobnicate").is_err());
        assert!(m.apply("ro=1").is_err());
        // Commas separate options: "b" alone is unknown.
        assert!(m.apply("fsname=a,b").is_err());
        let mut m = MountOptions::default();
        assert_eq!(
            m.apply("threads=0"),
            Err(OptionError::BadValue("threads=0".into(), "1 to 64".into()))
        );
        m.apply("threads=8,fsname=/tmp/x.img").unwrap();
        assert_eq!((m.threads, m.fsname.as_str()), (8, "/tmp/x.img"));
    }

    #[test]
    fn config() {
        let mut m = MountOptions::default();
        let c = m.config().unwrap();
        assert_eq!(c.acl, SessionACL::Owner);
        assert!(c.mount_options.contains(&MountOption::DefaultPermissions));
        assert!(!c.mount_options.contains(&MountOption::RO));
        m.apply("auto_unmount,ro").unwrap();
        let c = m.config().unwrap();
        assert_eq!(c.acl, SessionACL::RootAndOwner);
        assert!(c.mount_options.contains(&MountOption::RO));
        m.apply("allow_other").unwrap();
        assert_eq!(m.config().unwrap().acl, SessionACL::All);
        m.apply("allow_root").unwrap();
        assert_eq!(m.config().unwrap_err(), OptionError::AllowBoth);
    }
}
