//! `decode_block` with the expected epoch, sequence and previous CRC taken from the input,
//! on the raw rest of the input and on a copy whose chain fields match (so the length and
//! CRC checks run).
#![no_main]

use blobstore::format::block::{decode_block, encode_block, BlockHeader, BLOCK_HEADER};
use libfuzzer_sys::fuzz_target;

fn u64_at(d: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = d.get(off..off + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

fuzz_target!(|data: &[u8]| {
    let epoch = u64_at(data, 0);
    let seq = u64_at(data, 8);
    let prev = u64_at(data, 16) as u32;
    let rest = data.get(20..).unwrap_or(&[]);
    check(rest, epoch, seq, prev);
    if rest.len() >= 32 {
        let mut b = rest.to_vec();
        b[..4].copy_from_slice(b"BFLB");
        b[8..16].copy_from_slice(&epoch.to_le_bytes());
        b[16..24].copy_from_slice(&seq.to_le_bytes());
        b[24..28].copy_from_slice(&prev.to_le_bytes());
        check(&b, epoch, seq, prev);
    }
});

fn check(buf: &[u8], epoch: u64, seq: u64, prev: u32) {
    if let Ok((h, p, crc)) = decode_block(buf, epoch, seq, prev) {
        assert_eq!(h.payload_len as usize, p.len());
        assert!(BLOCK_HEADER + p.len() <= buf.len());
        // A decoded block re-encodes to the same bytes and CRC.
        let mut out = vec![0u8; BlockHeader::padded_len(p.len(), 512)];
        assert_eq!(encode_block(&h, p, &mut out), crc);
        assert_eq!(
            &out[..BLOCK_HEADER + p.len()],
            &buf[..BLOCK_HEADER + p.len()]
        );
    }
}
