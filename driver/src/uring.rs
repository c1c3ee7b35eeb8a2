//! io_uring with O_DIRECT on a regular file or a block device.

use crate::{Device, Geometry, QueuePair, Result};
use std::fmt;

/// Options for opening a file or block device.
#[derive(Clone, Debug, Default)]
pub struct UringOptions {
    /// Block size for regular files (default 4096); block devices use their logical block size.
    pub lba_size: Option<u32>,
    /// Open read-only.
    pub read_only: bool,
}

/// A file or block device driven through io_uring.
pub struct UringDevice {
    path: String,
    geom: Geometry,
}

impl fmt::Debug for UringDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringDevice")
            .field("path", &self.path)
            .finish()
    }
}

impl UringDevice {
    /// Opens `path`.
    pub fn open(path: &str, _opts: &UringOptions) -> Result<UringDevice> {
        Err(crate::Error::BadSpec {
            spec: path.into(),
            reason: "io_uring backend not built yet".into(),
        })
    }
}

impl Device for UringDevice {
    fn geometry(&self) -> Geometry {
        self.geom
    }
    fn open_qpair(&self, _depth: u32) -> Result<Box<dyn QueuePair>> {
        unimplemented!()
    }
    fn describe(&self) -> String {
        self.path.clone()
    }
}
