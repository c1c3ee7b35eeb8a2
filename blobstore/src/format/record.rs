//! Metadata records: the redo log of blob metadata.
//!
//! A group (one commit) is a stream of records, each a type byte and a fixed-layout body,
//! all little-endian. A snapshot is a group that starts with `SnapshotBegin`, recreates every
//! blob with the ordinary records and ends with `SnapshotEnd`.
//!
//! | type | record        | body                                                      |
//! |-----:|---------------|-----------------------------------------------------------|
//! |    1 | CreateBlob    | id u64, flags u64                                         |
//! |    2 | DeleteBlob    | id u64                                                    |
//! |    3 | Resize        | id u64, clusters u64                                      |
//! |    4 | MapRun        | id u64, index u64, first cluster u64 (0 = unmap), count u64 |
//! |    5 | SetXattr      | id u64, ns u8, name len u16, value len u32, name, value   |
//! |    6 | RemoveXattr   | id u64, ns u8, name len u16, name                         |
//! |    7 | SetFlags      | id u64, flags u64                                         |
//! |    8 | SnapshotBegin | next blob id u64, blob count u64                          |
//! |    9 | SnapshotEnd   | blob count u64                                            |
//! |   10 | DataCheck     | id u64, offset u64, length u64, crc u32                   |
//! |   11 | SetParent     | id u64, parent u64 (0 = none), through u64                |
//! |   12 | MoveClusters  | from u64, to u64, count u64                               |
//!
//! `DataCheck` ("bytes `[offset, offset+length)` of blob `id` have CRC32C `crc`") changes no
//! table state; it lets replay verify the data a *checked* group depends on when that group
//! is the last one of the log (see `recovery` and `docs/design.md`). Snapshots never hold it.

use super::codec::{Reader, Writer};
use crate::error::{corrupt, Result};
use crate::units::{BlobId, ClusterIdx};

/// Longest xattr name in bytes.
pub const MAX_XATTR_NAME: usize = 255;
/// Largest xattr value in bytes.
pub const MAX_XATTR_VALUE: usize = 64 * 1024;

/// Which xattr namespace: user-visible or internal (used by layers above, e.g. blobfs inode
/// attributes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XattrNs {
    User = 0,
    Internal = 1,
}

impl XattrNs {
    fn decode(v: u8) -> Result<XattrNs> {
        match v {
            0 => Ok(XattrNs::User),
            1 => Ok(XattrNs::Internal),
            _ => Err(corrupt(format!("record: xattr namespace {v}"))),
        }
    }
}

/// `SetParent` ("blob `id` reads the clusters it has not allocated, at indexes below
/// `through`, from `parent`") and `MoveClusters` ("each of the first `count` cluster indexes
/// that `from` has allocated and `to` has not passes to `to`") make snapshots and clones:
/// a snapshot takes its blob's clusters and becomes its parent; a clone is an empty blob
/// with a snapshot as parent. Both need the `clones` incompat feature.
///
/// One metadata change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    CreateBlob {
        id: BlobId,
        flags: u64,
    },
    DeleteBlob {
        id: BlobId,
    },
    Resize {
        id: BlobId,
        clusters: u64,
    },
    MapRun {
        id: BlobId,
        index: u64,
        first: ClusterIdx,
        count: u64,
    },
    SetXattr {
        id: BlobId,
        ns: XattrNs,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    RemoveXattr {
        id: BlobId,
        ns: XattrNs,
        name: Vec<u8>,
    },
    SetFlags {
        id: BlobId,
        flags: u64,
    },
    SnapshotBegin {
        next_blob_id: u64,
        blob_count: u64,
    },
    SnapshotEnd {
        blob_count: u64,
    },
    /// Bytes `[offset, offset + len)` of blob `id` have CRC32C `crc` (see [`data_crc`]).
    DataCheck {
        id: BlobId,
        offset: u64,
        len: u64,
        crc: u32,
    },
    /// Blob `id` reads unallocated cluster indexes below `through` from `parent`
    /// (`BlobId(0)`: no parent; unallocated clusters read zeroes).
    SetParent {
        id: BlobId,
        parent: BlobId,
        through: u64,
    },
    /// Of the first `count` cluster indexes, each allocated in `from` and not in `to` passes
    /// from `from` to `to` (ownership moves: nothing is freed or newly exposed).
    MoveClusters {
        from: BlobId,
        to: BlobId,
        count: u64,
    },
}

/// The checksum a [`Record::DataCheck`] carries: CRC32C (Castagnoli) of the bytes.
pub fn data_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Continues a [`data_crc`] over more bytes (`data_crc(a ++ b) == data_crc_append(data_crc(a), b)`).
pub fn data_crc_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// [`data_crc`] of `len` zero bytes, in O(log len) steps of a few hundred operations each
/// (no zeroes hashed beyond 4 KiB): for checks over mostly empty clusters.
pub fn zeros_crc(len: u64) -> u32 {
    static Z: [u8; 4096] = [0; 4096];
    let t = crc_tables();
    let mut crc = crc32c::crc32c(&Z[..(len % 4096) as usize]);
    let mut k = len / 4096;
    let mut i = 0;
    while k > 0 {
        if k & 1 == 1 {
            crc = data_crc_combine(crc, t.zeros[i], 4096 << i);
        }
        k >>= 1;
        i += 1;
    }
    crc
}

/// `data_crc(a ++ b)` from `data_crc(a)`, `data_crc(b)` and the length of `b`: zlib's
/// combine, with the operators for 2^k zero bytes computed once (the crc32c crate squares
/// matrices on every call, about 10 us for a 64 KiB length).
pub fn data_crc_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    let t = crc_tables();
    let mut crc = crc_a;
    let mut len = len_b;
    let mut k = 0;
    while len != 0 {
        if len & 1 == 1 {
            crc = gf2_times(&t.shift[k], crc);
        }
        len >>= 1;
        k += 1;
    }
    crc ^ crc_b
}

/// GF(2) 32x32 matrix (one column per word) times a vector.
fn gf2_times(mat: &[u32; 32], mut vec: u32) -> u32 {
    let mut sum = 0;
    let mut i = 0;
    while vec != 0 {
        if vec & 1 == 1 {
            sum ^= mat[i];
        }
        vec >>= 1;
        i += 1;
    }
    sum
}

fn gf2_square(mat: &[u32; 32]) -> [u32; 32] {
    let mut sq = [0u32; 32];
    for (n, s) in sq.iter_mut().enumerate() {
        *s = gf2_times(mat, mat[n]);
    }
    sq
}

struct CrcTables {
    /// `shift[k]`: the operator appending 2^k zero bytes to a CRC register.
    shift: [[u32; 32]; 64],
    /// `zeros[i]`: `data_crc` of 4096 << i zero bytes.
    zeros: [u32; 52],
}

fn crc_tables() -> &'static CrcTables {
    static T: std::sync::OnceLock<Box<CrcTables>> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        // The operator for one zero bit (the reflected CRC32C polynomial), squared three
        // times: one zero byte.
        let mut one_bit = [0u32; 32];
        one_bit[0] = 0x82F6_3B78;
        for (n, w) in one_bit.iter_mut().enumerate().skip(1) {
            *w = 1 << (n - 1);
        }
        let mut cur = gf2_square(&gf2_square(&gf2_square(&one_bit)));
        let mut t = Box::new(CrcTables {
            shift: [[0; 32]; 64],
            zeros: [0; 52],
        });
        for k in 0..64 {
            t.shift[k] = cur;
            cur = gf2_square(&cur);
        }
        let mut z = crc32c::crc32c(&[0u8; 4096]);
        for i in 0..52 {
            t.zeros[i] = z;
            // zeros(2n) = combine(zeros(n), zeros(n), n), with n = 4096 << i.
            let mut c = z;
            let mut len = 4096u64 << i;
            let mut k = 0;
            while len != 0 {
                if len & 1 == 1 {
                    c = gf2_times(&t.shift[k], c);
                }
                len >>= 1;
                k += 1;
            }
            z ^= c;
        }
        t
    })
}

const T_CREATE: u8 = 1;
const T_DELETE: u8 = 2;
const T_RESIZE: u8 = 3;
const T_MAP: u8 = 4;
const T_SETX: u8 = 5;
const T_REMX: u8 = 6;
const T_FLAGS: u8 = 7;
const T_SNAP_BEGIN: u8 = 8;
const T_SNAP_END: u8 = 9;
const T_DATA_CHECK: u8 = 10;
const T_SET_PARENT: u8 = 11;
const T_MOVE: u8 = 12;

impl Record {
    /// Appends the encoding to `w`.
    pub fn encode(&self, w: &mut Writer) {
        match self {
            Record::CreateBlob { id, flags } => {
                w.u8(T_CREATE).u64(id.0).u64(*flags);
            }
            Record::DeleteBlob { id } => {
                w.u8(T_DELETE).u64(id.0);
            }
            Record::Resize { id, clusters } => {
                w.u8(T_RESIZE).u64(id.0).u64(*clusters);
            }
            Record::MapRun {
                id,
                index,
                first,
                count,
            } => {
                w.u8(T_MAP).u64(id.0).u64(*index).u64(first.0).u64(*count);
            }
            Record::SetXattr {
                id,
                ns,
                name,
                value,
            } => {
                w.u8(T_SETX)
                    .u64(id.0)
                    .u8(*ns as u8)
                    .u16(name.len() as u16)
                    .u32(value.len() as u32)
                    .bytes(name)
                    .bytes(value);
            }
            Record::RemoveXattr { id, ns, name } => {
                w.u8(T_REMX)
                    .u64(id.0)
                    .u8(*ns as u8)
                    .u16(name.len() as u16)
                    .bytes(name);
            }
            Record::SetFlags { id, flags } => {
                w.u8(T_FLAGS).u64(id.0).u64(*flags);
            }
            Record::SnapshotBegin {
                next_blob_id,
                blob_count,
            } => {
                w.u8(T_SNAP_BEGIN).u64(*next_blob_id).u64(*blob_count);
            }
            Record::SnapshotEnd { blob_count } => {
                w.u8(T_SNAP_END).u64(*blob_count);
            }
            Record::DataCheck {
                id,
                offset,
                len,
                crc,
            } => {
                w.u8(T_DATA_CHECK)
                    .u64(id.0)
                    .u64(*offset)
                    .u64(*len)
                    .u32(*crc);
            }
            Record::SetParent {
                id,
                parent,
                through,
            } => {
                w.u8(T_SET_PARENT).u64(id.0).u64(parent.0).u64(*through);
            }
            Record::MoveClusters { from, to, count } => {
                w.u8(T_MOVE).u64(from.0).u64(to.0).u64(*count);
            }
        }
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Record::CreateBlob { .. } | Record::Resize { .. } | Record::SetFlags { .. } => 17,
            Record::DeleteBlob { .. } | Record::SnapshotEnd { .. } => 9,
            Record::MapRun { .. } => 33,
            Record::SetXattr { name, value, .. } => 16 + name.len() + value.len(),
            Record::RemoveXattr { name, .. } => 12 + name.len(),
            Record::SnapshotBegin { .. } => 17,
            Record::DataCheck { .. } => 29,
            Record::SetParent { .. } | Record::MoveClusters { .. } => 25,
        }
    }

    /// Decodes one record from `r`.
    pub fn decode(r: &mut Reader<'_>) -> Result<Record> {
        let t = r.u8()?;
        Ok(match t {
            T_CREATE => Record::CreateBlob {
                id: BlobId(r.u64()?),
                flags: r.u64()?,
            },
            T_DELETE => Record::DeleteBlob {
                id: BlobId(r.u64()?),
            },
            T_RESIZE => Record::Resize {
                id: BlobId(r.u64()?),
                clusters: r.u64()?,
            },
            T_MAP => Record::MapRun {
                id: BlobId(r.u64()?),
                index: r.u64()?,
                first: ClusterIdx(r.u64()?),
                count: r.u64()?,
            },
            T_SETX => {
                let id = BlobId(r.u64()?);
                let ns = XattrNs::decode(r.u8()?)?;
                let nlen = r.u16()? as usize;
                let vlen = r.u32()? as usize;
                check_xattr_sizes(nlen, vlen)?;
                let name = r.take(nlen)?.to_vec();
                let value = r.take(vlen)?.to_vec();
                Record::SetXattr {
                    id,
                    ns,
                    name,
                    value,
                }
            }
            T_REMX => {
                let id = BlobId(r.u64()?);
                let ns = XattrNs::decode(r.u8()?)?;
                let nlen = r.u16()? as usize;
                check_xattr_sizes(nlen, 0)?;
                Record::RemoveXattr {
                    id,
                    ns,
                    name: r.take(nlen)?.to_vec(),
                }
            }
            T_FLAGS => Record::SetFlags {
                id: BlobId(r.u64()?),
                flags: r.u64()?,
            },
            T_SNAP_BEGIN => Record::SnapshotBegin {
                next_blob_id: r.u64()?,
                blob_count: r.u64()?,
            },
            T_SNAP_END => Record::SnapshotEnd {
                blob_count: r.u64()?,
            },
            T_DATA_CHECK => Record::DataCheck {
                id: BlobId(r.u64()?),
                offset: r.u64()?,
                len: r.u64()?,
                crc: r.u32()?,
            },
            T_SET_PARENT => Record::SetParent {
                id: BlobId(r.u64()?),
                parent: BlobId(r.u64()?),
                through: r.u64()?,
            },
            T_MOVE => Record::MoveClusters {
                from: BlobId(r.u64()?),
                to: BlobId(r.u64()?),
                count: r.u64()?,
            },
            other => return Err(corrupt(format!("record: unknown type {other}"))),
        })
    }

    /// Decodes a whole group's record stream.
    pub fn decode_all(payload: &[u8]) -> Result<Vec<Record>> {
        let mut r = Reader::new(payload, "log record");
        let mut out = Vec::new();
        while !r.is_empty() {
            out.push(Record::decode(&mut r)?);
        }
        Ok(out)
    }
}

fn check_xattr_sizes(nlen: usize, vlen: usize) -> Result<()> {
    if nlen == 0 || nlen > MAX_XATTR_NAME {
        return Err(corrupt(format!("record: xattr name length {nlen}")));
    }
    if vlen > MAX_XATTR_VALUE {
        return Err(corrupt(format!("record: xattr value length {vlen}")));
    }
    Ok(())
}

/// Encodes a list of records into one stream.
pub fn encode_all(records: &[Record]) -> Vec<u8> {
    let mut w = Writer::new();
    for r in records {
        r.encode(&mut w);
    }
    w.buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<Record> {
        vec![
            Record::CreateBlob {
                id: BlobId(1),
                flags: 3,
            },
            Record::DeleteBlob { id: BlobId(2) },
            Record::Resize {
                id: BlobId(3),
                clusters: 4,
            },
            Record::MapRun {
                id: BlobId(5),
                index: 6,
                first: ClusterIdx(7),
                count: 8,
            },
            Record::SetXattr {
                id: BlobId(9),
                ns: XattrNs::Internal,
                name: b"nm".to_vec(),
                value: b"val".to_vec(),
            },
            Record::RemoveXattr {
                id: BlobId(10),
                ns: XattrNs::User,
                name: b"x".to_vec(),
            },
            Record::SetFlags {
                id: BlobId(11),
                flags: 2,
            },
            Record::SnapshotBegin {
                next_blob_id: 12,
                blob_count: 13,
            },
            Record::SnapshotEnd { blob_count: 13 },
            Record::DataCheck {
                id: BlobId(14),
                offset: 0x0102_0304_0506_0708,
                len: 4096,
                crc: 0xE306_9283,
            },
            Record::SetParent {
                id: BlobId(15),
                parent: BlobId(16),
                through: 17,
            },
            Record::MoveClusters {
                from: BlobId(18),
                to: BlobId(19),
                count: 20,
            },
        ]
    }

    #[test]
    fn golden_bytes() {
        let enc = encode_all(&all_kinds());
        let mut e = Vec::new();
        let u64s = |e: &mut Vec<u8>, v: &[u64]| {
            for x in v {
                e.extend_from_slice(&x.to_le_bytes());
            }
        };
        e.push(1);
        u64s(&mut e, &[1, 3]);
        e.push(2);
        u64s(&mut e, &[2]);
        e.push(3);
        u64s(&mut e, &[3, 4]);
        e.push(4);
        u64s(&mut e, &[5, 6, 7, 8]);
        e.push(5);
        u64s(&mut e, &[9]);
        e.push(1);
        e.extend_from_slice(&2u16.to_le_bytes());
        e.extend_from_slice(&3u32.to_le_bytes());
        e.extend_from_slice(b"nmval");
        e.push(6);
        u64s(&mut e, &[10]);
        e.push(0);
        e.extend_from_slice(&1u16.to_le_bytes());
        e.extend_from_slice(b"x");
        e.push(7);
        u64s(&mut e, &[11, 2]);
        e.push(8);
        u64s(&mut e, &[12, 13]);
        e.push(9);
        u64s(&mut e, &[13]);
        // DataCheck: type 10, id, offset, length (u64 each), crc u32: 29 bytes.
        e.push(10);
        u64s(&mut e, &[14, 0x0102_0304_0506_0708, 4096]);
        e.extend_from_slice(&0xE306_9283u32.to_le_bytes());
        assert_eq!(
            &enc[enc.len() - 29 - 50..enc.len() - 50],
            &[
                10, 14, 0, 0, 0, 0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1, 0, 16, 0, 0, 0, 0, 0, 0, 0x83,
                0x92, 0x06, 0xE3
            ]
        );
        // SetParent: type 11, id, parent, through; MoveClusters: type 12, from, to, count.
        e.push(11);
        u64s(&mut e, &[15, 16, 17]);
        e.push(12);
        u64s(&mut e, &[18, 19, 20]);
        assert_eq!(
            &enc[enc.len() - 50..enc.len() - 25],
            &[11, 15, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(enc, e);
        assert_eq!(Record::decode_all(&enc).unwrap(), all_kinds());
        let total: usize = all_kinds().iter().map(|r| r.encoded_len()).sum();
        assert_eq!(total, enc.len());
    }

    #[test]
    fn data_crc_is_crc32c() {
        assert_eq!(data_crc(b"123456789"), 0xE306_9283);
        assert_eq!(data_crc(b""), 0);
        assert_eq!(data_crc_append(data_crc(b"1234"), b"56789"), 0xE306_9283);
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        let enc = encode_all(&all_kinds());
        for cut in 1..enc.len() {
            let _ = Record::decode_all(&enc[..cut]);
        }
        assert!(Record::decode_all(&[0]).is_err());
        assert!(Record::decode_all(&[200, 1, 2]).is_err());
        assert!(Record::decode_all(&[11]).is_err());
        // A DataCheck one byte short.
        let mut w = Writer::new();
        w.u8(10).u64(1).u64(2).u64(3).u16(0).u8(0);
        assert!(Record::decode_all(&w.buf).is_err());
        // A huge declared xattr length is refused before allocating.
        let mut w = Writer::new();
        w.u8(5).u64(1).u8(0).u16(1).u32(u32::MAX);
        assert!(Record::decode_all(&w.buf).is_err());
        let mut w = Writer::new();
        w.u8(5).u64(1).u8(0).u16(0).u32(0);
        assert!(Record::decode_all(&w.buf).is_err());
    }

    #[test]
    fn zeros_crc_matches_hashing_zeroes() {
        for len in [
            0u64,
            1,
            511,
            4096,
            4097,
            8192,
            65536,
            65536 + 512,
            61440,
            1 << 20,
            (1 << 20) + 12345,
        ] {
            let z = vec![0u8; len as usize];
            assert_eq!(zeros_crc(len), data_crc(&z), "len {len}");
        }
        let (a, b) = (b"hello ".as_slice(), b"world".as_slice());
        assert_eq!(
            data_crc_combine(data_crc(a), data_crc(b), b.len() as u64),
            data_crc(b"hello world")
        );
        // Against the crc32c crate's own combine, over many lengths.
        for len in [1u64, 7, 4096, 65535, 1 << 20, (1 << 33) + 5] {
            assert_eq!(
                data_crc_combine(0x1234_5678, 0x9abc_def0, len),
                crc32c::crc32c_combine(0x1234_5678, 0x9abc_def0, len as usize),
                "len {len}"
            );
        }
    }
}
