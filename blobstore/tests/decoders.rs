//! The on-disk decoders fed random bytes and mutated valid encodings: they never panic,
//! valid encodings round-trip, and damage inside a checksummed range is always refused.
//! The cargo-fuzz targets in `fuzz/` drive the same entry points without a time limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use blobstore::format::block::{
    chain_seed, decode_block, encode_block, BlockHeader, NotABlock, BLOCK_HEADER, FLAG_CONTINUES,
    KIND_JUMP, KIND_RECORDS,
};
use blobstore::format::record::{encode_all, Record, MAX_XATTR_NAME};
use blobstore::format::superblock::{Superblock, SB_SIZE, SB_VERSION};
use blobstore::{BlobId, ClusterIdx, Error, XattrNs};
use proptest::collection::vec;
use proptest::prelude::*;

/// `cases` per test, unless `PROPTEST_CASES` asks for another number.
fn cfg(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ------------------------------------------------------------------------------ superblock

fn arb_superblock() -> impl Strategy<Value = Superblock> {
    (
        (
            prop_oneof![Just(SB_VERSION), any::<u32>()],
            any::<u64>(),
            any::<u64>(),
            prop_oneof![3 => Just(0u64), 1 => any::<u64>()],
            any::<[u8; 16]>(),
            any::<u64>(),
        ),
        (
            prop_oneof![
                3 => prop::sample::select(vec![512u32, 1024, 2048, 4096]),
                1 => any::<u32>()
            ],
            prop_oneof![3 => Just(4096u32), 1 => any::<u32>()],
            prop_oneof![
                3 => (14u32..31).prop_map(|s| 1u32 << s),
                1 => any::<u32>()
            ],
            prop_oneof![3 => 3u64..1_000_000, 1 => any::<u64>()],
            prop_oneof![3 => 0u64..1_000_000, 1 => any::<u64>()],
            (any::<u64>(), any::<u64>(), any::<u64>()),
        ),
    )
        .prop_map(
            |(
                (version, compat, ro_compat, incompat, uuid, generation),
                (
                    log_unit,
                    page_size,
                    cluster_size,
                    cluster_count,
                    log_start,
                    (log_epoch, log_start_seq, checkpoint_count),
                ),
            )| Superblock {
                version,
                compat,
                ro_compat,
                incompat,
                uuid,
                generation,
                log_unit,
                page_size,
                cluster_size,
                cluster_count,
                log_start,
                log_epoch,
                log_start_seq,
                checkpoint_count,
            },
        )
}

/// Recomputes the CRC of a superblock copy, so a mutation reaches the field checks.
fn fix_sb_crc(b: &mut [u8]) {
    let crc = crc32c_of(&b[..SB_SIZE - 4]);
    b[SB_SIZE - 4..SB_SIZE].copy_from_slice(&crc.to_le_bytes());
}

/// CRC32C (Castagnoli), bitwise: slow, but independent of the library's CRC code.
fn crc32c_of(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    !crc
}

#[test]
fn crc32c_helper_matches_the_standard_check_value() {
    assert_eq!(crc32c_of(b"123456789"), 0xE306_9283);
}

proptest! {
    #![proptest_config(cfg(1000))]

    #[test]
    fn superblock_decode_random_bytes(b in vec(any::<u8>(), 0..5000), magic in any::<bool>()) {
        let mut b = b;
        if magic && b.len() >= 8 {
            b[..8].copy_from_slice(b"BLOBFSSB");
        }
        let _ = Superblock::decode(&b);
        if b.len() >= SB_SIZE {
            fix_sb_crc(&mut b);
            let _ = Superblock::decode(&b);
        }
    }

    #[test]
    fn superblock_roundtrip(sb in arb_superblock()) {
        let b = sb.encode();
        prop_assert_eq!(b.len(), SB_SIZE);
        match Superblock::decode(&b) {
            Ok(d) => {
                prop_assert_eq!(&d, &sb);
                prop_assert!(sb.validate().is_ok());
                prop_assert_eq!(d.encode(), b);
            }
            Err(e) => {
                prop_assert!(sb.validate().is_err(), "valid superblock refused: {}", e);
                prop_assert!(matches!(e, Error::Corruption(_) | Error::Unsupported(_)), "{}", e);
            }
        }
    }

    #[test]
    fn superblock_mutations(
        sb in arb_superblock(),
        muts in vec((0usize..SB_SIZE, any::<u8>()), 1..6),
        fix_crc in any::<bool>(),
        trailing in vec(any::<u8>(), 0..64),
    ) {
        let orig = sb.encode();
        let mut b = orig.clone();
        for (at, v) in &muts {
            b[*at] = *v;
        }
        if fix_crc {
            fix_sb_crc(&mut b);
        }
        // Extra bytes after the copy are not part of it.
        b.extend_from_slice(&trailing);
        let r = Superblock::decode(&b);
        let changed = b[..SB_SIZE] != orig[..];
        if !fix_crc && changed {
            // Any change to a checksummed copy is refused (magic gone: not a blobstore).
            prop_assert!(r.is_err());
            if b[..8] == orig[..8] {
                prop_assert!(r.as_ref().unwrap_err().is_corruption());
            }
        }
        if let Ok(d) = r {
            prop_assert!(d.validate().is_ok());
            // What decodes re-encodes to the same fields.
            prop_assert_eq!(Superblock::decode(&d.encode()).unwrap(), d);
        }
    }
}

// ---------------------------------------------------------------------------- log blocks

fn arb_header_payload() -> impl Strategy<Value = (BlockHeader, Vec<u8>)> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        1u64..u64::MAX,
        vec(any::<u8>(), 0..3000),
    )
        .prop_map(|(jump, cont, epoch, seq, prev_crc, target, payload)| {
            if jump {
                (
                    BlockHeader {
                        kind: KIND_JUMP,
                        flags: 0,
                        epoch,
                        seq,
                        prev_crc,
                        payload_len: 0,
                        jump_to: target,
                    },
                    Vec::new(),
                )
            } else {
                (
                    BlockHeader {
                        kind: KIND_RECORDS,
                        flags: if cont { FLAG_CONTINUES } else { 0 },
                        epoch,
                        seq,
                        prev_crc,
                        payload_len: payload.len() as u32,
                        jump_to: 0,
                    },
                    payload,
                )
            }
        })
}

proptest! {
    #![proptest_config(cfg(1000))]

    #[test]
    fn block_decode_random_bytes(
        b in vec(any::<u8>(), 0..2000),
        epoch in any::<u64>(),
        seq in any::<u64>(),
        prev in any::<u32>(),
        plant in any::<bool>(),
    ) {
        let mut b = b;
        if plant && b.len() >= 32 {
            // Make the cheap checks pass so the length and CRC paths run.
            b[..4].copy_from_slice(b"BFLB");
            b[8..16].copy_from_slice(&epoch.to_le_bytes());
            b[16..24].copy_from_slice(&seq.to_le_bytes());
            b[24..28].copy_from_slice(&prev.to_le_bytes());
        }
        if let Ok((h, p, _)) = decode_block(&b, epoch, seq, prev) {
            prop_assert_eq!(h.payload_len as usize, p.len());
            prop_assert!(BLOCK_HEADER + p.len() <= b.len());
        }
    }

    #[test]
    fn block_roundtrip_and_damage(
        (h, payload) in arb_header_payload(),
        unit in prop::sample::select(vec![512usize, 4096]),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut out = vec![0u8; BlockHeader::padded_len(payload.len(), unit)];
        prop_assert_eq!(out.len() % unit, 0);
        let crc = encode_block(&h, &payload, &mut out);
        let (dh, dp, dc) = decode_block(&out, h.epoch, h.seq, h.prev_crc).unwrap();
        prop_assert_eq!(dh, h);
        prop_assert_eq!(dp, &payload[..]);
        prop_assert_eq!(dc, crc);
        // The chain: any other epoch, sequence or predecessor is not this block's.
        prop_assert_eq!(
            decode_block(&out, h.epoch ^ 1, h.seq, h.prev_crc).unwrap_err(),
            NotABlock::WrongEpoch
        );
        prop_assert_eq!(
            decode_block(&out, h.epoch, h.seq.wrapping_add(1), h.prev_crc).unwrap_err(),
            NotABlock::WrongSeq
        );
        prop_assert_eq!(
            decode_block(&out, h.epoch, h.seq, h.prev_crc ^ 1).unwrap_err(),
            NotABlock::BrokenChain
        );
        // Damage to any byte of header or payload is refused; padding is not covered.
        let i = at.index(out.len());
        let mut d = out.clone();
        d[i] ^= flip;
        let r = decode_block(&d, h.epoch, h.seq, h.prev_crc);
        if i < BLOCK_HEADER + payload.len() {
            prop_assert!(r.is_err(), "flip at {} accepted", i);
        } else {
            prop_assert!(r.is_ok());
        }
        // Truncated buffers never decode past their end.
        let cut = at.index(out.len() + 1);
        if let Ok((_, p, _)) = decode_block(&out[..cut], h.epoch, h.seq, h.prev_crc) {
            prop_assert!(cut >= BLOCK_HEADER + p.len());
        }
    }

    #[test]
    fn block_chain_seed_is_stable(epoch in any::<u64>()) {
        prop_assert_eq!(chain_seed(epoch), chain_seed(epoch));
    }
}

// ------------------------------------------------------------------------------- records

fn arb_ns() -> impl Strategy<Value = XattrNs> {
    prop_oneof![Just(XattrNs::User), Just(XattrNs::Internal)]
}

fn arb_record() -> impl Strategy<Value = Record> {
    let id = any::<u64>().prop_map(BlobId);
    prop_oneof![
        (id.clone(), any::<u64>()).prop_map(|(id, flags)| Record::CreateBlob { id, flags }),
        id.clone().prop_map(|id| Record::DeleteBlob { id }),
        (id.clone(), any::<u64>()).prop_map(|(id, clusters)| Record::Resize { id, clusters }),
        (id.clone(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(id, index, first, count)| Record::MapRun {
                id,
                index,
                first: ClusterIdx(first),
                count
            }
        ),
        (
            id.clone(),
            arb_ns(),
            vec(any::<u8>(), 1..=MAX_XATTR_NAME),
            vec(any::<u8>(), 0..400)
        )
            .prop_map(|(id, ns, name, value)| Record::SetXattr {
                id,
                ns,
                name,
                value
            }),
        (id.clone(), arb_ns(), vec(any::<u8>(), 1..=MAX_XATTR_NAME))
            .prop_map(|(id, ns, name)| Record::RemoveXattr { id, ns, name }),
        (id.clone(), any::<u64>()).prop_map(|(id, flags)| Record::SetFlags { id, flags }),
        (any::<u64>(), any::<u64>()).prop_map(|(next_blob_id, blob_count)| {
            Record::SnapshotBegin {
                next_blob_id,
                blob_count,
            }
        }),
        any::<u64>().prop_map(|blob_count| Record::SnapshotEnd { blob_count }),
        (id, any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(id, offset, len, crc)| {
            Record::DataCheck {
                id,
                offset,
                len,
                crc,
            }
        }),
    ]
}

proptest! {
    #![proptest_config(cfg(1000))]

    #[test]
    fn records_decode_random_bytes(b in vec(any::<u8>(), 0..600), types in vec(1u8..=10, 0..8)) {
        // Plain noise, then noise whose first bytes are valid record types.
        let _ = Record::decode_all(&b);
        let mut b = b;
        for (i, t) in types.iter().enumerate() {
            if i * 9 < b.len() {
                b[i * 9] = *t;
            }
        }
        if let Ok(rs) = Record::decode_all(&b) {
            // The encoding is canonical: what decodes re-encodes to the same bytes.
            prop_assert_eq!(encode_all(&rs), b);
        }
    }

    #[test]
    fn records_roundtrip_and_mutations(
        recs in vec(arb_record(), 0..12),
        cut in any::<prop::sample::Index>(),
        muts in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let enc = encode_all(&recs);
        let total: usize = recs.iter().map(Record::encoded_len).sum();
        prop_assert_eq!(total, enc.len());
        prop_assert_eq!(&Record::decode_all(&enc).unwrap(), &recs);
        // A truncated stream decodes only when cut at a record boundary.
        let c = cut.index(enc.len() + 1);
        let mut boundaries = vec![0usize];
        for r in &recs {
            boundaries.push(boundaries.last().unwrap() + r.encoded_len());
        }
        let r = Record::decode_all(&enc[..c]);
        prop_assert_eq!(r.is_ok(), boundaries.contains(&c), "cut at {}", c);
        if let Err(e) = r {
            prop_assert!(e.is_corruption());
        }
        // Mutated streams never panic, and what decodes is canonical.
        if !enc.is_empty() {
            let mut m = enc.clone();
            for (at, v) in &muts {
                let i = at.index(m.len());
                m[i] = *v;
            }
            match Record::decode_all(&m) {
                Ok(rs) => prop_assert_eq!(encode_all(&rs), m),
                Err(e) => prop_assert!(e.is_corruption()),
            }
        }
    }
}
