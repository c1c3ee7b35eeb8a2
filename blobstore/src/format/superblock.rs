//! The superblock: two 4 KiB copies in pages 0 and 1, the newer valid one wins.
//!
//! | offset | size | field                                                      |
//! |-------:|-----:|------------------------------------------------------------|
//! |      0 |    8 | magic `BLOBFSSB`                                           |
//! |      8 |    4 | format version (1)                                         |
//! |     12 |    4 | bytes covered by the CRC + 4 (always 4096)                 |
//! |     16 |    8 | compat feature bits (unknown ones are ignored)             |
//! |     24 |    8 | ro_compat feature bits (unknown ones: read-only open only) |
//! |     32 |    8 | incompat feature bits (unknown ones: refuse to open)       |
//! |     40 |   16 | uuid                                                       |
//! |     56 |    8 | generation (+1 per superblock write; copy = gen % 2)       |
//! |     64 |    4 | log unit in bytes (the LBA size at mkfs)                   |
//! |     68 |    4 | page size (4096)                                           |
//! |     72 |    4 | cluster size in bytes                                      |
//! |     76 |    4 | reserved, zero                                             |
//! |     80 |    8 | cluster count                                              |
//! |     88 |    8 | log start: first segment (a cluster index)                 |
//! |     96 |    8 | log epoch                                                  |
//! |    104 |    8 | log start sequence number                                  |
//! |    112 |    8 | checkpoint count                                           |
//! |    120 | 3972 | zero                                                       |
//! |   4092 |    4 | CRC32C of bytes 0..4092                                    |

use super::codec::{le32, le64};
use crate::error::{corrupt, Error, Result};
use crate::units::PAGE_SIZE;

/// Magic bytes at offset 0.
pub const SB_MAGIC: [u8; 8] = *b"BLOBFSSB";
/// Format version written by this build.
pub const SB_VERSION: u32 = 1;
/// Size of one superblock copy.
pub const SB_SIZE: usize = 4096;
const CRC_OFF: usize = SB_SIZE - 4;

/// Incompat bit 0, `data_checks`: the log may hold checked groups (block flag bit 1) and
/// `DataCheck` records (type 10). A build that does not know it would apply a checked last
/// group without verifying its data, so it must refuse the image. Set by `format`; a store
/// without it never writes checked groups (checked commits fall back to the ordered path).
pub const INCOMPAT_DATA_CHECKS: u64 = 1;

/// Incompat bit 1, `clones`: blobs may have a parent (`SetParent`, type 11) and clusters may
/// pass between blobs (`MoveClusters`, type 12). A build that does not know it would read a
/// clone's unallocated clusters as zeroes instead of its parent's data. Set by `format`;
/// snapshots and clones are refused on a store without it.
pub const INCOMPAT_CLONES: u64 = 2;

/// Feature bits this build understands, per word.
pub const COMPAT_KNOWN: u64 = 0;
pub const RO_COMPAT_KNOWN: u64 = 0;
pub const INCOMPAT_KNOWN: u64 = INCOMPAT_DATA_CHECKS | INCOMPAT_CLONES;

/// Largest log start sequence accepted: a log can never hold more blocks than the device
/// has LBAs, so sequence arithmetic from here on cannot overflow.
pub const MAX_LOG_SEQ: u64 = 1 << 62;

/// Smallest and largest cluster sizes accepted.
pub const MIN_CLUSTER_SIZE: u32 = 16 * 1024;
pub const MAX_CLUSTER_SIZE: u32 = 1 << 30;

/// The decoded superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub version: u32,
    pub compat: u64,
    pub ro_compat: u64,
    pub incompat: u64,
    pub uuid: [u8; 16],
    pub generation: u64,
    pub log_unit: u32,
    pub page_size: u32,
    pub cluster_size: u32,
    pub cluster_count: u64,
    pub log_start: u64,
    pub log_epoch: u64,
    pub log_start_seq: u64,
    pub checkpoint_count: u64,
}

impl Superblock {
    /// Encodes into one 4 KiB copy.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SB_SIZE];
        b[0..8].copy_from_slice(&SB_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(SB_SIZE as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.compat.to_le_bytes());
        b[24..32].copy_from_slice(&self.ro_compat.to_le_bytes());
        b[32..40].copy_from_slice(&self.incompat.to_le_bytes());
        b[40..56].copy_from_slice(&self.uuid);
        b[56..64].copy_from_slice(&self.generation.to_le_bytes());
        b[64..68].copy_from_slice(&self.log_unit.to_le_bytes());
        b[68..72].copy_from_slice(&self.page_size.to_le_bytes());
        b[72..76].copy_from_slice(&self.cluster_size.to_le_bytes());
        b[80..88].copy_from_slice(&self.cluster_count.to_le_bytes());
        b[88..96].copy_from_slice(&self.log_start.to_le_bytes());
        b[96..104].copy_from_slice(&self.log_epoch.to_le_bytes());
        b[104..112].copy_from_slice(&self.log_start_seq.to_le_bytes());
        b[112..120].copy_from_slice(&self.checkpoint_count.to_le_bytes());
        let crc = crc32c::crc32c(&b[..CRC_OFF]);
        b[CRC_OFF..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and validates one copy. `Err(NotABlobstore)` when the magic is absent (an
    /// empty slot or a foreign device), `Err(Unsupported)` for a format this build cannot
    /// read, `Err(Corruption)` when the magic is there but the rest is wrong.
    pub fn decode(b: &[u8]) -> Result<Superblock> {
        let sb = Superblock::decode_unchecked(b)?;
        sb.validate()?;
        Ok(sb)
    }

    /// Decodes one copy checking only magic, CRC and size, not the fields: lets the loader
    /// see the generation of a copy it then refuses (a newer format must not lose to an
    /// older copy).
    pub fn decode_unchecked(b: &[u8]) -> Result<Superblock> {
        if b.len() < SB_SIZE {
            return Err(corrupt(format!(
                "superblock: {} bytes, need {SB_SIZE}",
                b.len()
            )));
        }
        if b[0..8] != SB_MAGIC {
            return Err(Error::NotABlobstore("no superblock magic".into()));
        }
        let stored = le32(b, CRC_OFF);
        let crc = crc32c::crc32c(&b[..CRC_OFF]);
        if stored != crc {
            return Err(corrupt(format!(
                "superblock: CRC mismatch (stored {stored:#010x}, computed {crc:#010x})"
            )));
        }
        let sb = Superblock {
            version: le32(b, 8),
            compat: le64(b, 16),
            ro_compat: le64(b, 24),
            incompat: le64(b, 32),
            uuid: {
                let mut u = [0u8; 16];
                u.copy_from_slice(&b[40..56]);
                u
            },
            generation: le64(b, 56),
            log_unit: le32(b, 64),
            page_size: le32(b, 68),
            cluster_size: le32(b, 72),
            cluster_count: le64(b, 80),
            log_start: le64(b, 88),
            log_epoch: le64(b, 96),
            log_start_seq: le64(b, 104),
            checkpoint_count: le64(b, 112),
        };
        if le32(b, 12) != SB_SIZE as u32 {
            return Err(corrupt(format!(
                "superblock: bad size field {}",
                le32(b, 12)
            )));
        }
        Ok(sb)
    }

    /// Checks that the fields describe a possible store (independent of the device).
    pub fn validate(&self) -> Result<()> {
        if self.version != SB_VERSION {
            return Err(Error::Unsupported(format!(
                "format version {} (this build reads {SB_VERSION})",
                self.version
            )));
        }
        if self.incompat & !INCOMPAT_KNOWN != 0 {
            return Err(Error::Unsupported(format!(
                "incompatible feature bits {:#x}",
                self.incompat & !INCOMPAT_KNOWN
            )));
        }
        if self.page_size != PAGE_SIZE {
            return Err(corrupt(format!("superblock: page size {}", self.page_size)));
        }
        if !self.log_unit.is_power_of_two() || self.log_unit < 512 || self.log_unit > PAGE_SIZE {
            return Err(corrupt(format!("superblock: log unit {}", self.log_unit)));
        }
        if !self.cluster_size.is_power_of_two()
            || !(MIN_CLUSTER_SIZE..=MAX_CLUSTER_SIZE).contains(&self.cluster_size)
        {
            return Err(corrupt(format!(
                "superblock: cluster size {}",
                self.cluster_size
            )));
        }
        if self.cluster_count < 3 {
            return Err(corrupt(format!(
                "superblock: cluster count {}",
                self.cluster_count
            )));
        }
        if self.log_start_seq == 0 || self.log_start_seq > MAX_LOG_SEQ {
            return Err(corrupt(format!(
                "superblock: log start sequence {}",
                self.log_start_seq
            )));
        }
        if self.log_start == 0 || self.log_start >= self.cluster_count {
            return Err(corrupt(format!(
                "superblock: log start cluster {} outside 1..{}",
                self.log_start, self.cluster_count
            )));
        }
        Ok(())
    }

    /// Whether unknown ro_compat bits forbid writing.
    pub fn read_only_features(&self) -> u64 {
        self.ro_compat & !RO_COMPAT_KNOWN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Superblock {
        Superblock {
            version: SB_VERSION,
            compat: 0,
            ro_compat: 0,
            incompat: 0,
            uuid: *b"0123456789abcdef",
            generation: 7,
            log_unit: 4096,
            page_size: 4096,
            cluster_size: 1 << 20,
            cluster_count: 1024,
            log_start: 5,
            log_epoch: 0x1122334455667788,
            log_start_seq: 42,
            checkpoint_count: 3,
        }
    }

    #[test]
    fn golden_bytes() {
        let b = sample().encode();
        let mut expect = vec![0u8; 4096];
        let head: Vec<u8> = [
            &b"BLOBFSSB"[..],
            &1u32.to_le_bytes(),
            &4096u32.to_le_bytes(),
            &0u64.to_le_bytes(),
            &0u64.to_le_bytes(),
            &0u64.to_le_bytes(),
            b"0123456789abcdef",
            &7u64.to_le_bytes(),
            &4096u32.to_le_bytes(),
            &4096u32.to_le_bytes(),
            &(1u32 << 20).to_le_bytes(),
            &0u32.to_le_bytes(),
            &1024u64.to_le_bytes(),
            &5u64.to_le_bytes(),
            &0x1122334455667788u64.to_le_bytes(),
            &42u64.to_le_bytes(),
            &3u64.to_le_bytes(),
        ]
        .concat();
        assert_eq!(head.len(), 120);
        expect[..120].copy_from_slice(&head);
        let crc = crc32c::crc32c(&expect[..4092]);
        expect[4092..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(b, expect);
        // Pin the CRC itself so a change of the CRC flavour or coverage is caught too.
        assert_eq!(crc, 0x1b37_0492);
        assert_eq!(Superblock::decode(&b).unwrap(), sample());
    }

    #[test]
    fn crc32c_flavour_is_castagnoli() {
        // Standard check value of CRC-32C over "123456789".
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn rejects_damage() {
        let b = sample().encode();
        let mut z = b.clone();
        z[0] = b'X';
        assert!(matches!(
            Superblock::decode(&z),
            Err(Error::NotABlobstore(_))
        ));
        for i in 8..4096 {
            let mut d = b.clone();
            d[i] ^= 0x10;
            assert!(Superblock::decode(&d).is_err(), "flip at byte {i} accepted");
        }
        assert!(Superblock::decode(&b[..100]).is_err());
    }

    #[test]
    fn feature_words() {
        let mut s = sample();
        s.incompat = 1 << 40;
        assert!(matches!(
            Superblock::decode(&s.encode()),
            Err(Error::Unsupported(_))
        ));
        let mut s = sample();
        s.ro_compat = 1 << 3;
        let d = Superblock::decode(&s.encode()).unwrap();
        assert_eq!(d.read_only_features(), 1 << 3);
        let mut s = sample();
        s.compat = 1 << 9;
        assert!(Superblock::decode(&s.encode()).is_ok());
        let mut s = sample();
        s.incompat = INCOMPAT_DATA_CHECKS;
        assert_eq!(Superblock::decode(&s.encode()).unwrap().incompat, 1);
        assert_eq!(&s.encode()[32..40], &[1, 0, 0, 0, 0, 0, 0, 0]);
        s.incompat = INCOMPAT_DATA_CHECKS | INCOMPAT_CLONES;
        assert!(Superblock::decode(&s.encode()).is_ok());
        s.incompat = INCOMPAT_DATA_CHECKS | 4;
        assert!(matches!(
            Superblock::decode(&s.encode()),
            Err(Error::Unsupported(_))
        ));
    }
}
