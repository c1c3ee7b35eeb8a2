//! Shared helpers for the blobstore integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use blobstore::{Blobstore, FormatOptions, OpenOptions};
use driver::mem::{MemDevice, MemOptions};
use driver::uring::{UringDevice, UringOptions};
use driver::Device;
use std::sync::Arc;

/// A device under test and how to get it back after closing the store.
pub struct TestDev {
    pub name: &'static str,
    pub dev: Arc<dyn Device>,
    pub mem: Option<MemDevice>,
    pub dir: Option<tempfile::TempDir>,
    pub path: Option<String>,
}

impl TestDev {
    pub fn mem(capacity: u64, lba: u32) -> TestDev {
        let mem = MemDevice::new(MemOptions {
            capacity,
            lba_size: lba,
            ..MemOptions::default()
        })
        .unwrap();
        TestDev {
            name: "mem",
            dev: Arc::new(mem.clone()),
            mem: Some(mem),
            dir: None,
            path: None,
        }
    }

    pub fn uring(capacity: u64, lba: u32) -> TestDev {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.img");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(capacity).unwrap();
        drop(f);
        let path = path.to_str().unwrap().to_string();
        let dev = UringDevice::open(
            &path,
            &UringOptions {
                lba_size: Some(lba),
                ..UringOptions::default()
            },
        )
        .unwrap();
        TestDev {
            name: "uring",
            dev: Arc::new(dev),
            mem: None,
            dir: Some(dir),
            path: Some(path),
        }
    }

    /// Both backends with the same geometry (memory, io_uring on an image file); when
    /// `BLOBFS_TEST_NVME` names an NVMe namespace (`/dev/ng0n1` for io_uring passthrough,
    /// `/dev/nvme0n1` for the block device, `pci:0000:00:10.0` for the userspace driver;
    /// the VM tests set it), the first `capacity` bytes
    /// of that namespace instead of the image file, if its LBA size is `lba` (the VM runs
    /// both sizes). Tests using it must run one at a time
    /// (`--test-threads=1`): they share the namespace.
    pub fn all(capacity: u64, lba: u32) -> Vec<TestDev> {
        let mut v = vec![TestDev::mem(capacity, lba)];
        match std::env::var("BLOBFS_TEST_NVME") {
            // In the VM: the namespace instead of an image file (the guest's /tmp is a
            // tmpfs, without O_DIRECT on its kernel; image files are tested on the host).
            Ok(path) => v.extend(TestDev::nvme(&path, capacity, lba)),
            Err(_) => v.push(TestDev::uring(capacity, lba)),
        }
        v
    }

    /// The first `capacity` bytes of an NVMe namespace, or `None` if its LBA size is not
    /// `lba`.
    pub fn nvme(path: &str, capacity: u64, lba: u32) -> Option<TestDev> {
        // open_uri drives /dev/ngXnY through passthrough, pci:ADDRESS with the userspace
        // driver, and a block device through io_uring.
        let dev = driver::open_uri(path).unwrap();
        if dev.geometry().lba_size != lba {
            return None;
        }
        Some(TestDev {
            name: "nvme",
            dev: Arc::new(Window::new(dev, capacity)),
            mem: None,
            dir: None,
            path: Some(path.to_string()),
        })
    }

    pub fn format(&self, cluster_size: u32) -> Blobstore {
        Blobstore::create(
            Arc::clone(&self.dev),
            &FormatOptions {
                cluster_size,
                ..FormatOptions::default()
            },
            OpenOptions::default(),
        )
        .unwrap()
    }

    pub fn open(&self) -> Blobstore {
        Blobstore::open(Arc::clone(&self.dev), OpenOptions::default()).unwrap()
    }
}

/// The first bytes of a device, as a device of their own (a namespace much larger than a
/// test wants: out-of-space tests must still find the end where they expect it).
#[derive(Debug)]
pub struct Window {
    inner: Arc<dyn Device>,
    geom: driver::Geometry,
}

impl Window {
    pub fn new(inner: Arc<dyn Device>, capacity: u64) -> Window {
        let mut geom = inner.geometry();
        geom.lba_count = geom.lba_count.min(capacity / u64::from(geom.lba_size));
        Window { inner, geom }
    }
}

impl Device for Window {
    fn geometry(&self) -> driver::Geometry {
        self.geom
    }
    fn open_qpair(&self, depth: u32) -> driver::Result<Box<dyn driver::QueuePair>> {
        // Commands past the window never come: the store only addresses its geometry.
        self.inner.open_qpair(depth)
    }
    fn describe(&self) -> String {
        format!(
            "{} (first {} LBAs)",
            self.inner.describe(),
            self.geom.lba_count
        )
    }
}

/// Bytes that identify (tag, offset) uniquely, so misplaced data is recognisable.
pub fn pattern(tag: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut i = 0u64;
    while v.len() < len {
        let word = (tag.wrapping_mul(0x9e37_79b9_7f4a_7c15)) ^ (offset + i);
        v.extend_from_slice(&word.to_le_bytes());
        i += 8;
    }
    v.truncate(len);
    v
}

/// Asserts the store's consistency check is clean.
pub fn assert_clean(store: &Blobstore) {
    let r = store.check().unwrap();
    assert!(r.is_clean(), "consistency check: {:#?}", r.problems);
}
