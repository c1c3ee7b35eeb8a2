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

    /// Both backends with the same geometry.
    pub fn all(capacity: u64, lba: u32) -> Vec<TestDev> {
        vec![TestDev::mem(capacity, lba), TestDev::uring(capacity, lba)]
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
