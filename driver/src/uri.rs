//! Choosing a backend from a string: `mem:SIZE`, `file:PATH`, or a plain path.

use crate::mem::{MemDevice, MemOptions};
use crate::uring::{UringDevice, UringOptions};
use crate::{Device, Error, Result};
use std::sync::Arc;

/// Parses a size such as `4096`, `64K`, `1M`, `10G`, `1T` (binary units, optional `iB`/`B`).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let upper = s.to_ascii_uppercase();
    let t = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (num, shift) = match t.chars().last()? {
        'K' => (&t[..t.len() - 1], 10),
        'M' => (&t[..t.len() - 1], 20),
        'G' => (&t[..t.len() - 1], 30),
        'T' => (&t[..t.len() - 1], 40),
        'P' => (&t[..t.len() - 1], 50),
        _ => (t, 0),
    };
    let n: u64 = num.trim().parse().ok()?;
    n.checked_mul(1u64 << shift)
}

fn bad(spec: &str, reason: impl Into<String>) -> Error {
    Error::BadSpec {
        spec: spec.to_string(),
        reason: reason.into(),
    }
}

/// Opens a device from a spec:
///
/// - `mem:SIZE[?lba=N]`: a new, empty in-memory device (tests, demos);
/// - `file:PATH[?lba=N]` or `PATH`: a regular file or block device through io_uring with
///   O_DIRECT. `lba` overrides the block size used for a regular file (default 4096). An
///   NVMe namespace's generic character device (`/dev/ngXnY`) goes through io_uring
///   passthrough;
/// - `pci:DOMAIN:BUS:DEV.FN` (`pci:0000:00:04.0`): namespace 1 of an NVMe controller bound
///   to `uio_pci_generic`, driven by the userspace driver ([`crate::pci`]).
pub fn open_uri(spec: &str) -> Result<Arc<dyn Device>> {
    let (body, query) = match spec.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (spec, None),
    };
    let mut lba: Option<u32> = None;
    if let Some(q) = query {
        for kv in q.split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("lba", v)) => {
                    lba = Some(
                        v.parse()
                            .map_err(|_| bad(spec, format!("bad lba size {v:?}")))?,
                    )
                }
                _ => return Err(bad(spec, format!("unknown option {kv:?} (known: lba=N)"))),
            }
        }
    }
    if let Some(size) = body.strip_prefix("mem:") {
        let capacity = parse_size(size).ok_or_else(|| bad(spec, format!("bad size {size:?}")))?;
        let dev = MemDevice::new(MemOptions {
            capacity,
            lba_size: lba.unwrap_or(4096),
            ..MemOptions::default()
        })?;
        return Ok(Arc::new(dev));
    }
    let path = body.strip_prefix("file:").unwrap_or(body);
    if path.is_empty() {
        return Err(bad(spec, "empty path"));
    }
    if let Some((scheme, _)) = path.split_once(':') {
        if scheme != "pci" && !scheme.contains('/') && !std::path::Path::new(path).exists() {
            return Err(bad(
                spec,
                format!("unknown scheme {scheme:?} (known: mem:, file:, pci:, or a path)"),
            ));
        }
    }
    if let Some(addr) = path.strip_prefix("pci:") {
        if lba.is_some() {
            return Err(bad(spec, "a PCI controller's LBA size is its namespace's"));
        }
        let dev = crate::pci::PciDevice::open(addr, &crate::pci::PciOptions::default())?;
        return Ok(Arc::new(dev));
    }
    let is_char = std::fs::metadata(path)
        .map(|m| std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()))
        .unwrap_or(false);
    if is_char {
        let dev = crate::passthru::PassthruDevice::open(
            path,
            &crate::passthru::PassthruOptions::default(),
        )?;
        if let Some(l) = lba.filter(|l| *l != dev.geometry().lba_size) {
            return Err(bad(
                spec,
                format!(
                    "the namespace has {}-byte LBAs, not {l}",
                    dev.geometry().lba_size
                ),
            ));
        }
        return Ok(Arc::new(dev));
    }
    let dev = UringDevice::open(
        path,
        &UringOptions {
            lba_size: lba,
            ..UringOptions::default()
        },
    )?;
    Ok(Arc::new(dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("1m"), Some(1 << 20));
        assert_eq!(parse_size("10GiB"), Some(10 << 30));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999P"), None);
    }

    #[test]
    fn mem_uri() {
        let d = open_uri("mem:16M?lba=512").unwrap();
        assert_eq!(d.geometry().lba_size, 512);
        assert_eq!(d.geometry().capacity(), 16 << 20);
        assert!(open_uri("mem:abc").is_err());
        assert!(open_uri("mem:1M?color=red").is_err());
        assert!(open_uri("nvme-foo:xyz").is_err());
    }
}
