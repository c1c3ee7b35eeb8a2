//! The ext4 baseline: a file of the same size as our image, made an ext4 filesystem on a
//! loop device (with O_DIRECT on the backing file, like our io_uring backend) and mounted.
//! Everything is undone on drop.

use crate::{note, run_cmd};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted ext4 on a loop device over a file.
#[derive(Debug)]
pub struct Ext4Loop {
    pub image: PathBuf,
    pub device: String,
    pub mountpoint: PathBuf,
}

impl Ext4Loop {
    /// Makes `image` of `size` bytes, attaches it with direct I/O, makes ext4 (default
    /// options, the journal included) and mounts it at `mountpoint`.
    pub fn new(image: &Path, size: u64, mountpoint: &Path) -> Result<Ext4Loop> {
        let f = std::fs::File::create(image)
            .with_context(|| format!("creating {}", image.display()))?;
        f.set_len(size)?;
        drop(f);
        let out = run_cmd(
            Command::new("losetup")
                .args(["--find", "--show", "--direct-io=on"])
                .arg(image),
        )
        .context("attaching a loop device (needs root)")?;
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mut me = Ext4Loop {
            image: image.to_path_buf(),
            device,
            mountpoint: PathBuf::new(),
        };
        run_cmd(Command::new("mkfs.ext4").args(["-q", "-F", &me.device])).context("mkfs.ext4")?;
        std::fs::create_dir_all(mountpoint)?;
        run_cmd(Command::new("mount").arg(&me.device).arg(mountpoint)).context("mounting ext4")?;
        me.mountpoint = mountpoint.to_path_buf();
        note(format!(
            "ext4 baseline on {} ({}) mounted at {}",
            me.device,
            image.display(),
            mountpoint.display()
        ));
        Ok(me)
    }

    /// Drops the page cache of this filesystem (and all others), so reads hit the device.
    pub fn drop_caches() {
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    }
}

impl Drop for Ext4Loop {
    fn drop(&mut self) {
        if !self.mountpoint.as_os_str().is_empty() {
            let _ = Command::new("umount").arg(&self.mountpoint).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
        let _ = std::fs::remove_file(&self.image);
    }
}
