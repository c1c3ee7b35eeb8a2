//! Log blocks: the unit in which the metadata log is written.
//!
//! A block starts at a log-unit (LBA) boundary inside a log segment (one cluster) and is
//! padded with zeroes to the next boundary. Blocks form a hash chain: each carries the CRC
//! of the block before it, so a block left over from an older use of the same space never
//! continues the log, even if its sequence number happens to fit.
//!
//! | offset | size | field                                                         |
//! |-------:|-----:|---------------------------------------------------------------|
//! |      0 |    4 | magic `BFLB`                                                  |
//! |      4 |    2 | kind: 1 = records, 2 = jump                                   |
//! |      6 |    2 | flags: bit 0 = the group continues in the next block;         |
//! |        |      |        bit 1 = checked group (on every records block of it)   |
//! |      8 |    8 | log epoch (from the superblock)                               |
//! |     16 |    8 | sequence number (previous + 1)                                |
//! |     24 |    4 | CRC of the previous block (first block: chain seed of epoch)  |
//! |     28 |    4 | payload length in bytes                                       |
//! |     32 |    8 | jump target segment (kind 2), else 0                          |
//! |     40 |    4 | reserved, zero                                                |
//! |     44 |    4 | CRC32C of bytes 0..44 followed by the payload                 |
//! |     48 |    n | payload: a slice of the group's record stream                 |
//!
//! A *checked* group was written without first flushing the data it depends on; it carries
//! `DataCheck` records for that data, and replay verifies them if (and only if) the group is
//! the last complete group of the log. Other flag bits are reserved (written as zero,
//! ignored on read).

use super::codec::{le32, le64};
use crate::error::{corrupt, Result};

pub const BLOCK_MAGIC: [u8; 4] = *b"BFLB";
pub const BLOCK_HEADER: usize = 48;
pub const KIND_RECORDS: u16 = 1;
pub const KIND_JUMP: u16 = 2;
pub const FLAG_CONTINUES: u16 = 1;
/// The group was committed without a data pre-flush: verify its `DataCheck`s if it is the
/// last group of the log. Set on every records block of the group, never on jump blocks.
pub const FLAG_CHECKED: u16 = 2;

/// The first `prev_crc` of an epoch's chain.
pub fn chain_seed(epoch: u64) -> u32 {
    crc32c::crc32c(&epoch.to_le_bytes()) ^ 0x5eed_b10c
}

/// A decoded block header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    pub kind: u16,
    pub flags: u16,
    pub epoch: u64,
    pub seq: u64,
    pub prev_crc: u32,
    pub payload_len: u32,
    pub jump_to: u64,
}

impl BlockHeader {
    /// Bytes the block occupies on disk, padded to `unit`.
    pub fn padded_len(payload_len: usize, unit: usize) -> usize {
        (BLOCK_HEADER + payload_len).div_ceil(unit) * unit
    }

    pub fn continues(&self) -> bool {
        self.flags & FLAG_CONTINUES != 0
    }

    /// Whether this block belongs to a checked group.
    pub fn checked(&self) -> bool {
        self.flags & FLAG_CHECKED != 0
    }
}

/// Encodes a block into `out` (which must be zeroed and exactly `padded_len` long) and
/// returns its CRC, the `prev_crc` of the next block.
pub fn encode_block(h: &BlockHeader, payload: &[u8], out: &mut [u8]) -> u32 {
    debug_assert_eq!(h.payload_len as usize, payload.len());
    out[0..4].copy_from_slice(&BLOCK_MAGIC);
    out[4..6].copy_from_slice(&h.kind.to_le_bytes());
    out[6..8].copy_from_slice(&h.flags.to_le_bytes());
    out[8..16].copy_from_slice(&h.epoch.to_le_bytes());
    out[16..24].copy_from_slice(&h.seq.to_le_bytes());
    out[24..28].copy_from_slice(&h.prev_crc.to_le_bytes());
    out[28..32].copy_from_slice(&h.payload_len.to_le_bytes());
    out[32..40].copy_from_slice(&h.jump_to.to_le_bytes());
    out[40..44].copy_from_slice(&0u32.to_le_bytes());
    out[BLOCK_HEADER..BLOCK_HEADER + payload.len()].copy_from_slice(payload);
    let crc = block_crc(&out[..44], payload);
    out[44..48].copy_from_slice(&crc.to_le_bytes());
    crc
}

fn block_crc(head: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(head), payload)
}

/// Why a position in a segment does not hold the next block of the log. None of these are
/// errors by themselves: the first one met marks the end (tail) of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotABlock {
    TooShort,
    BadMagic,
    WrongEpoch,
    WrongSeq,
    BrokenChain,
    BadLength,
    BadCrc,
    BadKind,
}

/// Decodes the block at the start of `buf` if it is the expected next block of the chain.
/// Returns the header, the payload and the block's CRC.
pub fn decode_block(
    buf: &[u8],
    epoch: u64,
    seq: u64,
    prev_crc: u32,
) -> std::result::Result<(BlockHeader, &[u8], u32), NotABlock> {
    if buf.len() < BLOCK_HEADER {
        return Err(NotABlock::TooShort);
    }
    if buf[0..4] != BLOCK_MAGIC {
        return Err(NotABlock::BadMagic);
    }
    let h = BlockHeader {
        kind: u16::from_le_bytes([buf[4], buf[5]]),
        flags: u16::from_le_bytes([buf[6], buf[7]]),
        epoch: le64(buf, 8),
        seq: le64(buf, 16),
        prev_crc: le32(buf, 24),
        payload_len: le32(buf, 28),
        jump_to: le64(buf, 32),
    };
    if h.epoch != epoch {
        return Err(NotABlock::WrongEpoch);
    }
    if h.seq != seq {
        return Err(NotABlock::WrongSeq);
    }
    if h.prev_crc != prev_crc {
        return Err(NotABlock::BrokenChain);
    }
    let len = h.payload_len as usize;
    if len > buf.len() - BLOCK_HEADER {
        return Err(NotABlock::BadLength);
    }
    let payload = &buf[BLOCK_HEADER..BLOCK_HEADER + len];
    let crc = block_crc(&buf[..44], payload);
    if crc != le32(buf, 44) {
        return Err(NotABlock::BadCrc);
    }
    match h.kind {
        KIND_RECORDS if h.jump_to == 0 => {}
        KIND_JUMP if len == 0 && h.jump_to != 0 => {}
        _ => return Err(NotABlock::BadKind),
    }
    Ok((h, payload, crc))
}

/// Checks a decoded jump target against the store's geometry.
pub fn check_jump(target: u64, cluster_count: u64) -> Result<()> {
    if target == 0 || target >= cluster_count {
        return Err(corrupt(format!(
            "log jump to cluster {target} outside 1..{cluster_count}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (BlockHeader, Vec<u8>) {
        let payload = b"hello records".to_vec();
        (
            BlockHeader {
                kind: KIND_RECORDS,
                flags: FLAG_CONTINUES,
                epoch: 9,
                seq: 100,
                prev_crc: 0xdeadbeef,
                payload_len: payload.len() as u32,
                jump_to: 0,
            },
            payload,
        )
    }

    #[test]
    fn golden_bytes() {
        let (h, p) = sample();
        let mut out = vec![0u8; BlockHeader::padded_len(p.len(), 512)];
        assert_eq!(out.len(), 512);
        let crc = encode_block(&h, &p, &mut out);
        let mut expect = Vec::new();
        expect.extend_from_slice(b"BFLB");
        expect.extend_from_slice(&1u16.to_le_bytes());
        expect.extend_from_slice(&1u16.to_le_bytes());
        expect.extend_from_slice(&9u64.to_le_bytes());
        expect.extend_from_slice(&100u64.to_le_bytes());
        expect.extend_from_slice(&0xdeadbeefu32.to_le_bytes());
        expect.extend_from_slice(&13u32.to_le_bytes());
        expect.extend_from_slice(&0u64.to_le_bytes());
        expect.extend_from_slice(&0u32.to_le_bytes());
        let c = crc32c::crc32c_append(crc32c::crc32c(&expect), b"hello records");
        assert_eq!(c, crc);
        expect.extend_from_slice(&c.to_le_bytes());
        expect.extend_from_slice(b"hello records");
        expect.resize(512, 0);
        assert_eq!(out, expect);
        let (dh, dp, dc) = decode_block(&out, 9, 100, 0xdeadbeef).unwrap();
        assert_eq!(dh, h);
        assert_eq!(dp, b"hello records");
        assert_eq!(dc, crc);
    }

    /// A block of a checked group: flags 3 (continues + checked) at bytes 6..8.
    #[test]
    fn golden_bytes_checked() {
        let (mut h, p) = sample();
        h.flags = FLAG_CONTINUES | FLAG_CHECKED;
        let mut out = vec![0u8; 512];
        encode_block(&h, &p, &mut out);
        assert_eq!(&out[4..8], &[1, 0, 3, 0]);
        let mut plain = vec![0u8; 512];
        let (h0, _) = sample();
        encode_block(&h0, &p, &mut plain);
        // Only the flags and the CRC differ from the unchecked block.
        let differ: Vec<usize> = (0..512).filter(|&i| out[i] != plain[i]).collect();
        assert!(
            differ.iter().all(|&i| i == 6 || (44..48).contains(&i)),
            "{differ:?}"
        );
        let (dh, _, _) = decode_block(&out, 9, 100, 0xdeadbeef).unwrap();
        assert!(dh.checked() && dh.continues());
        assert!(!h0.checked());
    }

    #[test]
    fn chain_checks() {
        let (h, p) = sample();
        let mut out = vec![0u8; 512];
        encode_block(&h, &p, &mut out);
        assert_eq!(
            decode_block(&out, 8, 100, 0xdeadbeef).unwrap_err(),
            NotABlock::WrongEpoch
        );
        assert_eq!(
            decode_block(&out, 9, 101, 0xdeadbeef).unwrap_err(),
            NotABlock::WrongSeq
        );
        assert_eq!(
            decode_block(&out, 9, 100, 1).unwrap_err(),
            NotABlock::BrokenChain
        );
        assert_eq!(
            decode_block(&out[..40], 9, 100, 0xdeadbeef).unwrap_err(),
            NotABlock::TooShort
        );
        for i in 0..(BLOCK_HEADER + p.len()) {
            let mut d = out.clone();
            d[i] ^= 1;
            assert!(decode_block(&d, 9, 100, 0xdeadbeef).is_err(), "byte {i}");
        }
        // Damage in the padding is harmless.
        let mut d = out.clone();
        d[500] = 1;
        assert!(decode_block(&d, 9, 100, 0xdeadbeef).is_ok());
    }

    #[test]
    fn jump_blocks() {
        let h = BlockHeader {
            kind: KIND_JUMP,
            flags: 0,
            epoch: 1,
            seq: 2,
            prev_crc: 3,
            payload_len: 0,
            jump_to: 77,
        };
        let mut out = vec![0u8; 512];
        encode_block(&h, &[], &mut out);
        let (d, _, _) = decode_block(&out, 1, 2, 3).unwrap();
        assert_eq!(d.jump_to, 77);
        assert!(check_jump(77, 100).is_ok());
        assert!(check_jump(0, 100).is_err());
        assert!(check_jump(100, 100).is_err());
    }
}
