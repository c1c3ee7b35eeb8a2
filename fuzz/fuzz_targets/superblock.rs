//! `Superblock::decode` on arbitrary bytes, and on arbitrary bytes behind a valid magic with
//! a correct CRC (so the field checks run, not only the checksum).
#![no_main]

use blobstore::format::superblock::{Superblock, SB_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Superblock::decode(data);
    // A full copy: magic, the input as fields, a correct CRC.
    let mut b = vec![0u8; SB_SIZE];
    b[..8].copy_from_slice(b"BLOBFSSB");
    let n = data.len().min(SB_SIZE - 12);
    b[8..8 + n].copy_from_slice(&data[..n]);
    let crc = crc32c::crc32c(&b[..SB_SIZE - 4]);
    b[SB_SIZE - 4..].copy_from_slice(&crc.to_le_bytes());
    if let Ok(sb) = Superblock::decode(&b) {
        // What decodes is valid and survives a round trip.
        assert!(sb.validate().is_ok());
        assert_eq!(
            Superblock::decode(&sb.encode()).expect("re-encoded copy"),
            sb
        );
    }
});
