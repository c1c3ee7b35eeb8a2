//! What the NVMe backends share: opcodes, the Identify structures they read, and status
//! decoding (NVM Express Base Specification 2.0, figures named where used).

use crate::Error;

/// I/O command opcodes (NVM command set).
pub(crate) const OP_FLUSH: u8 = 0x00;
pub(crate) const OP_WRITE: u8 = 0x01;
pub(crate) const OP_READ: u8 = 0x02;
pub(crate) const OP_WRITE_ZEROES: u8 = 0x08;
pub(crate) const OP_DSM: u8 = 0x09;

/// Admin command opcodes.
pub(crate) const ADMIN_DELETE_SQ: u8 = 0x00;
pub(crate) const ADMIN_CREATE_SQ: u8 = 0x01;
pub(crate) const ADMIN_DELETE_CQ: u8 = 0x04;
pub(crate) const ADMIN_CREATE_CQ: u8 = 0x05;
pub(crate) const ADMIN_IDENTIFY: u8 = 0x06;
pub(crate) const ADMIN_SET_FEATURES: u8 = 0x09;

/// Identify CNS values.
pub(crate) const CNS_NAMESPACE: u32 = 0x00;
pub(crate) const CNS_CONTROLLER: u32 = 0x01;

/// Set Features: Number of Queues.
pub(crate) const FEAT_NUM_QUEUES: u32 = 0x07;

/// Largest block count of one Write Zeroes (NLB is a 16-bit, zero-based field).
pub(crate) const MAX_ZERO_LBAS: u64 = 1 << 16;

/// Write Zeroes CDW12 bit 25: deallocate the blocks too.
pub(crate) const WZ_DEAC: u32 = 1 << 25;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

/// The fields of Identify Controller (CNS 01h) the backends use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct IdController {
    pub serial: String,
    pub model: String,
    /// Maximum Data Transfer Size: 2^mdts units of the minimum page size; 0 = no limit.
    pub mdts: u8,
    /// Number of namespaces.
    pub nn: u32,
    /// Optional NVM Command Support: bit 2 Dataset Management, bit 3 Write Zeroes.
    pub oncs: u16,
    /// Volatile Write Cache present (bit 0).
    pub vwc: u8,
}

impl IdController {
    /// Parses the 4096-byte Identify Controller data.
    pub fn parse(b: &[u8]) -> Option<IdController> {
        if b.len() < 4096 {
            return None;
        }
        let text = |r: std::ops::Range<usize>| {
            String::from_utf8_lossy(&b[r])
                .trim_end_matches(['\0', ' '])
                .to_string()
        };
        Some(IdController {
            serial: text(4..24),
            model: text(24..64),
            mdts: b[77],
            nn: le32(b, 516),
            oncs: le16(b, 520),
            vwc: b[525],
        })
    }

    pub fn has_dsm(&self) -> bool {
        self.oncs & (1 << 2) != 0
    }

    pub fn has_write_zeroes(&self) -> bool {
        self.oncs & (1 << 3) != 0
    }
}

/// The fields of Identify Namespace (CNS 00h) the backends use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct IdNamespace {
    /// Namespace size in logical blocks.
    pub nsze: u64,
    /// Bytes per logical block of the LBA format in use.
    pub lba_size: u32,
    /// Metadata bytes per block of the format in use (the backends need 0).
    pub metadata: u16,
    /// DLFEAT bits 2:0 == 001b: deallocated blocks read back as zeroes.
    pub dealloc_reads_zeroes: bool,
}

impl IdNamespace {
    /// Parses the 4096-byte Identify Namespace data. `None` for a short buffer or an
    /// inactive namespace (all zero), or an LBA size outside 512 B..64 KiB.
    pub fn parse(b: &[u8]) -> Option<IdNamespace> {
        if b.len() < 4096 {
            return None;
        }
        let nsze = le64(b, 0);
        let flbas = usize::from(b[26] & 0x0f);
        let lbaf = le32(b, 128 + 4 * flbas);
        let lbads = (lbaf >> 16) & 0xff;
        if nsze == 0 || !(9..=16).contains(&lbads) {
            return None;
        }
        Some(IdNamespace {
            nsze,
            lba_size: 1 << lbads,
            metadata: (lbaf & 0xffff) as u16,
            dealloc_reads_zeroes: b[33] & 0x7 == 1,
        })
    }
}

/// The name of a status (status code type, status code), for messages (Figures 100-104, 106).
pub(crate) fn status_text(sct: u8, sc: u8) -> &'static str {
    match (sct, sc) {
        (0, 0x00) => "successful completion",
        (0, 0x01) => "invalid command opcode",
        (0, 0x02) => "invalid field in command",
        (0, 0x03) => "command ID conflict",
        (0, 0x04) => "data transfer error",
        (0, 0x05) => "commands aborted due to power loss notification",
        (0, 0x06) => "internal error",
        (0, 0x07) => "command abort requested",
        (0, 0x08) => "command aborted due to SQ deletion",
        (0, 0x09) => "command aborted due to failed fused command",
        (0, 0x0a) => "command aborted due to missing fused command",
        (0, 0x0b) => "invalid namespace or format",
        (0, 0x0c) => "command sequence error",
        (0, 0x0d) => "invalid SGL segment descriptor",
        (0, 0x13) => "invalid PRP offset",
        (0, 0x15) => "operation denied",
        (0, 0x80) => "LBA out of range",
        (0, 0x81) => "capacity exceeded",
        (0, 0x82) => "namespace not ready",
        (0, 0x83) => "reservation conflict",
        (1, 0x00) => "completion queue invalid",
        (1, 0x01) => "invalid queue identifier",
        (1, 0x02) => "invalid queue size",
        (1, 0x08) => "invalid interrupt vector",
        (1, 0x0b) => "invalid format",
        (1, 0x0c) => "invalid queue deletion",
        (1, 0x80) => "conflicting attributes",
        (1, 0x82) => "attempted write to read-only range",
        (2, 0x80) => "write fault",
        (2, 0x81) => "unrecovered read error",
        (2, 0x82) => "end-to-end guard check error",
        (2, 0x83) => "end-to-end application tag check error",
        (2, 0x84) => "end-to-end reference tag check error",
        (2, 0x85) => "compare failure",
        (2, 0x86) => "access denied",
        (2, 0x87) => "deallocated or unwritten logical block",
        (3, _) => "path related status",
        (7, _) => "vendor specific",
        _ => "unknown status",
    }
}

/// The error for a failed command: `status` is the 15-bit Status Field (completion queue
/// entry DW3 bits 31:17): SC in bits 7:0, SCT in 10:8, CRD 12:11, More 13, DNR 14.
pub(crate) fn status_error(status: u16) -> Error {
    let sc = (status & 0xff) as u8;
    let sct = ((status >> 8) & 0x7) as u8;
    Error::Nvme {
        sct,
        sc,
        dnr: status & (1 << 14) != 0,
        text: status_text(sct, sc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_namespace_fields() {
        let mut b = vec![0u8; 4096];
        b[0..8].copy_from_slice(&1000u64.to_le_bytes());
        b[26] = 1; // format 1 in use
        b[33] = 0x09; // DLFEAT: reads zeroes, write zeroes may deallocate
        b[132..136].copy_from_slice(&(12u32 << 16).to_le_bytes());
        let ns = IdNamespace::parse(&b).unwrap();
        assert_eq!(ns.nsze, 1000);
        assert_eq!(ns.lba_size, 4096);
        assert_eq!(ns.metadata, 0);
        assert!(ns.dealloc_reads_zeroes);
        b[33] = 0x02;
        assert!(!IdNamespace::parse(&b).unwrap().dealloc_reads_zeroes);
        // Inactive namespace, bad LBA size, short buffer.
        assert!(IdNamespace::parse(&[0u8; 4096]).is_none());
        b[132..136].copy_from_slice(&(3u32 << 16).to_le_bytes());
        assert!(IdNamespace::parse(&b).is_none());
        assert!(IdNamespace::parse(&b[..100]).is_none());
    }

    #[test]
    fn identify_controller_fields() {
        let mut b = vec![0u8; 4096];
        b[4..10].copy_from_slice(b"blobfs");
        b[24..28].copy_from_slice(b"QEMU");
        b[77] = 7;
        b[516..520].copy_from_slice(&256u32.to_le_bytes());
        b[520..522].copy_from_slice(&0x0cu16.to_le_bytes());
        b[525] = 1;
        let c = IdController::parse(&b).unwrap();
        assert_eq!(c.serial, "blobfs");
        assert_eq!(c.model, "QEMU");
        assert_eq!(c.mdts, 7);
        assert_eq!(c.nn, 256);
        assert!(c.has_dsm() && c.has_write_zeroes());
        assert_eq!(c.vwc, 1);
    }

    #[test]
    fn statuses_decode() {
        // LBA out of range, generic type, do-not-retry set.
        let e = status_error(0x80 | (1 << 14));
        assert_eq!(
            e.to_string(),
            "NVMe command failed: LBA out of range (status type 0x0, code 0x80, do not retry)"
        );
        let e = status_error(0x281);
        assert!(e.to_string().contains("unrecovered read error"), "{e}");
        assert!(e.to_string().contains("may retry"), "{e}");
    }
}
