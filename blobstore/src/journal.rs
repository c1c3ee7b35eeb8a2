//! The metadata log writer: lays a group's record stream out as chained blocks in log
//! segments, jumping to a fresh segment when one fills.
//!
//! A segment is one cluster. Every block must leave room for one more log unit at the end
//! of its segment, so that a jump block always fits.

use crate::error::Result;
use crate::format::block::{
    encode_block, BlockHeader, BLOCK_HEADER, FLAG_CONTINUES, KIND_JUMP, KIND_RECORDS,
};
use crate::units::ClusterIdx;

/// Where the log continues and the state of its hash chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Journal {
    pub epoch: u64,
    /// Sequence number of the next block.
    pub seq: u64,
    /// CRC of the last block written (or the chain seed).
    pub prev_crc: u32,
    /// Segment of the next block.
    pub seg: ClusterIdx,
    /// Byte offset of the next block in its segment.
    pub off: u64,
    /// All segments of this log, oldest first (the first holds the snapshot).
    pub segments: Vec<ClusterIdx>,
    /// Bytes of blocks in this log.
    pub bytes: u64,
    /// Bytes of the snapshot group that starts the log.
    pub snapshot_bytes: u64,
    pub unit: u64,
    pub seg_size: u64,
}

/// One contiguous write of log bytes.
#[derive(Debug)]
pub struct LogWrite {
    pub seg: ClusterIdx,
    pub off: u64,
    pub data: Vec<u8>,
}

impl Journal {
    /// A new, empty log starting at the beginning of `seg`.
    pub fn new(
        epoch: u64,
        seq: u64,
        prev_crc: u32,
        seg: ClusterIdx,
        unit: u64,
        seg_size: u64,
    ) -> Journal {
        Journal {
            epoch,
            seq,
            prev_crc,
            seg,
            off: 0,
            segments: vec![seg],
            bytes: 0,
            snapshot_bytes: 0,
            unit,
            seg_size,
        }
    }

    /// Payload bytes a block can carry at the current position.
    fn room(&self) -> usize {
        let avail = self.seg_size.saturating_sub(self.off + self.unit);
        let avail = avail / self.unit * self.unit;
        (avail as usize).saturating_sub(BLOCK_HEADER)
    }

    /// Lays out `payload` (one group) as blocks and advances the chain. `new_segment` is
    /// called for each jump. Returns the writes to issue; none of them is durable or even
    /// submitted yet, so on failure the caller must stop using this journal.
    pub fn build_group(
        &mut self,
        payload: &[u8],
        new_segment: &mut dyn FnMut() -> Result<ClusterIdx>,
    ) -> Result<Vec<LogWrite>> {
        self.build_group_flagged(payload, 0, new_segment)
    }

    /// `build_group` with extra flag bits (`FLAG_CHECKED`) on every records block of the
    /// group (jump blocks never carry them).
    pub fn build_group_flagged(
        &mut self,
        payload: &[u8],
        group_flags: u16,
        new_segment: &mut dyn FnMut() -> Result<ClusterIdx>,
    ) -> Result<Vec<LogWrite>> {
        debug_assert_eq!(group_flags & FLAG_CONTINUES, 0);
        let unit = self.unit as usize;
        let mut writes: Vec<LogWrite> = Vec::new();
        let mut rest = payload;
        loop {
            let room = self.room();
            // Jump rather than cut the payload into slivers at the end of a segment.
            let want = rest.len().min(self.seg_size as usize / 4);
            if room < want.max(1) {
                let target = new_segment()?;
                let h = BlockHeader {
                    kind: KIND_JUMP,
                    flags: 0,
                    epoch: self.epoch,
                    seq: self.seq,
                    prev_crc: self.prev_crc,
                    payload_len: 0,
                    jump_to: target.0,
                };
                let mut buf = vec![0u8; BlockHeader::padded_len(0, unit)];
                self.prev_crc = encode_block(&h, &[], &mut buf);
                self.push(&mut writes, buf);
                self.seq += 1;
                self.seg = target;
                self.off = 0;
                self.segments.push(target);
                continue;
            }
            let n = rest.len().min(room);
            let (now, later) = rest.split_at(n);
            let h = BlockHeader {
                kind: KIND_RECORDS,
                flags: group_flags | if later.is_empty() { 0 } else { FLAG_CONTINUES },
                epoch: self.epoch,
                seq: self.seq,
                prev_crc: self.prev_crc,
                payload_len: n as u32,
                jump_to: 0,
            };
            let mut buf = vec![0u8; BlockHeader::padded_len(n, unit)];
            self.prev_crc = encode_block(&h, now, &mut buf);
            self.push(&mut writes, buf);
            self.seq += 1;
            rest = later;
            if rest.is_empty() {
                return Ok(writes);
            }
        }
    }

    /// Appends a block at the current position, merging with the previous write when
    /// contiguous.
    fn push(&mut self, writes: &mut Vec<LogWrite>, block: Vec<u8>) {
        let len = block.len() as u64;
        match writes.last_mut() {
            Some(w) if w.seg == self.seg && w.off + w.data.len() as u64 == self.off => {
                w.data.extend_from_slice(&block)
            }
            _ => writes.push(LogWrite {
                seg: self.seg,
                off: self.off,
                data: block,
            }),
        }
        self.off += len;
        self.bytes += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::block::{chain_seed, decode_block};

    /// Replays blocks from an in-memory map of segments and returns the groups found.
    fn read_back(j0: &Journal, segs: &std::collections::HashMap<u64, Vec<u8>>) -> Vec<Vec<u8>> {
        let (mut seg, mut off, mut seq, mut prev) =
            (j0.segments[0].0, 0usize, 1u64, chain_seed(j0.epoch));
        let mut groups = Vec::new();
        let mut cur = Vec::new();
        loop {
            let buf = &segs[&seg];
            let Ok((h, p, crc)) = decode_block(&buf[off..], j0.epoch, seq, prev) else {
                break;
            };
            seq += 1;
            prev = crc;
            if h.kind == KIND_JUMP {
                seg = h.jump_to;
                off = 0;
                continue;
            }
            off += BlockHeader::padded_len(p.len(), j0.unit as usize);
            cur.extend_from_slice(p);
            if !h.continues() {
                groups.push(std::mem::take(&mut cur));
            }
        }
        groups
    }

    #[test]
    fn groups_span_segments_with_jumps() {
        let seg_size = 16 * 1024u64;
        let epoch = 77;
        let mut j = Journal::new(epoch, 1, chain_seed(epoch), ClusterIdx(1), 512, seg_size);
        let start = j.clone();
        let mut next = 2u64;
        let mut segs: std::collections::HashMap<u64, Vec<u8>> = Default::default();
        let mut groups = Vec::new();
        for g in 0..20usize {
            let payload: Vec<u8> = (0..(g * 997 % 9000 + 1))
                .map(|i| (i * 7 + g) as u8)
                .collect();
            let writes = j
                .build_group(&payload, &mut || {
                    next += 1;
                    Ok(ClusterIdx(next - 1))
                })
                .unwrap();
            for w in writes {
                assert_eq!(w.off % 512, 0);
                assert!(w.off + w.data.len() as u64 <= seg_size);
                let s = segs
                    .entry(w.seg.0)
                    .or_insert_with(|| vec![0u8; seg_size as usize]);
                s[w.off as usize..w.off as usize + w.data.len()].copy_from_slice(&w.data);
            }
            groups.push(payload);
        }
        assert!(j.segments.len() > 3);
        assert_eq!(read_back(&start, &segs), groups);
    }
}
