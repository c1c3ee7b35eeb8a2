//! A sparse in-memory device with a volatile write-cache model.
//!
//! Only written blocks cost memory, so a 1 TiB namespace is cheap. Every mutating command is
//! applied to the *current* contents (what reads see) and remembered as *pending* until a
//! Flush executes; [`MemDevice::power_cut`] then builds the image a power loss could leave:
//! the durable contents plus any subset of the pending writes, each dropped, kept or torn at
//! the atomic-write-unit granularity. Commands in flight on a queue pair execute in a random
//! (seeded) order when polled, so callers that rely on submission order get caught.

use crate::{Completion, Device, Error, Geometry, Op, QueuePair, Result, SubmitError};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What happens to writes that were never flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CacheModel {
    /// Completed writes stay volatile until a Flush (the NVMe default we design for).
    #[default]
    Volatile,
    /// Completed writes are durable at once (a device with power-loss protection).
    WriteThrough,
}

/// How a simulated power cut treats writes that were not yet flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutPolicy {
    /// Every unflushed write is lost.
    DropAll,
    /// Every unflushed write survives.
    KeepAll,
    /// Each unflushed write is independently lost, kept, or torn (a random subset of its
    /// atomic units survives).
    Random,
}

/// Counters of the commands a device executed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    pub reads: u64,
    pub bytes_read: u64,
    pub writes: u64,
    pub bytes_written: u64,
    pub flushes: u64,
    pub zeroes: u64,
    pub deallocates: u64,
}

/// Block contents in fixed-size chunks; missing chunks read as zeroes.
#[derive(Clone, Default)]
struct Sparse {
    chunk: usize,
    map: BTreeMap<u64, Box<[u8]>>,
}

impl Sparse {
    fn new(chunk: usize) -> Sparse {
        Sparse {
            chunk,
            map: BTreeMap::new(),
        }
    }

    fn read(&self, mut off: u64, out: &mut [u8]) {
        let chunk = self.chunk as u64;
        let mut done = 0;
        while done < out.len() {
            let idx = off / chunk;
            let within = (off % chunk) as usize;
            let n = (self.chunk - within).min(out.len() - done);
            match self.map.get(&idx) {
                Some(c) => out[done..done + n].copy_from_slice(&c[within..within + n]),
                None => out[done..done + n].fill(0),
            }
            done += n;
            off += n as u64;
        }
    }

    fn write(&mut self, mut off: u64, data: &[u8]) {
        let chunk = self.chunk as u64;
        let mut done = 0;
        while done < data.len() {
            let idx = off / chunk;
            let within = (off % chunk) as usize;
            let n = (self.chunk - within).min(data.len() - done);
            let c = self
                .map
                .entry(idx)
                .or_insert_with(|| vec![0u8; self.chunk].into_boxed_slice());
            c[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
            off += n as u64;
        }
    }

    fn zero(&mut self, off: u64, len: u64) {
        let chunk = self.chunk as u64;
        let end = off + len;
        // Whole chunks inside the range are removed without visiting the gaps, so zeroing a
        // terabyte costs only what is stored there.
        let first_full = off.div_ceil(chunk);
        let last_full = end / chunk; // exclusive
        if first_full < last_full {
            let keys: Vec<u64> = self
                .map
                .range(first_full..last_full)
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                self.map.remove(&k);
            }
        }
        // Partial edges.
        let mut zero_part = |from: u64, to: u64| {
            if from >= to {
                return;
            }
            let idx = from / chunk;
            if let Some(c) = self.map.get_mut(&idx) {
                let a = (from % chunk) as usize;
                let b = a + (to - from) as usize;
                c[a..b].fill(0);
            }
        };
        if first_full >= last_full {
            // The range lies within at most two chunks and covers none fully.
            let mid = (off / chunk + 1) * chunk;
            zero_part(off, end.min(mid));
            zero_part(mid.max(off), end);
        } else {
            zero_part(off, first_full * chunk);
            zero_part(last_full * chunk, end);
        }
    }

    fn stored_bytes(&self) -> u64 {
        (self.map.len() * self.chunk) as u64
    }
}

/// An unflushed mutation: `data` is `None` for zeroes (WriteZeroes/Deallocate).
#[derive(Clone)]
struct Pending {
    off: u64,
    len: u64,
    data: Option<Arc<[u8]>>,
}

struct State {
    current: Sparse,
    durable: Sparse,
    pending: Vec<Pending>,
    powered: bool,
    stats: MemStats,
}

struct Shared {
    geom: Geometry,
    cache: CacheModel,
    reorder: bool,
    seed: u64,
    flush_delay: std::time::Duration,
    next_qp: AtomicU64,
    state: Mutex<State>,
    name: String,
}

/// The in-memory device. Cloning the handle shares the device.
#[derive(Clone)]
pub struct MemDevice {
    shared: Arc<Shared>,
}

impl fmt::Debug for MemDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemDevice")
            .field("geometry", &self.shared.geom)
            .field("cache", &self.shared.cache)
            .finish()
    }
}

/// Options for a new in-memory device.
#[derive(Clone, Debug)]
pub struct MemOptions {
    pub lba_size: u32,
    pub capacity: u64,
    pub atomic_write_lbas: u32,
    pub max_transfer: u32,
    pub cache: CacheModel,
    /// Execute in-flight commands in a random order when polled.
    pub reorder: bool,
    /// Seed of the reordering.
    pub seed: u64,
    /// Time a Flush takes (a real device's cache flush is not free; group commit needs a
    /// cost to amortize to be measurable).
    pub flush_delay: std::time::Duration,
}

impl Default for MemOptions {
    fn default() -> Self {
        MemOptions {
            lba_size: 4096,
            capacity: 64 << 20,
            atomic_write_lbas: 1,
            max_transfer: 1 << 20,
            cache: CacheModel::Volatile,
            reorder: true,
            seed: 0x5eed,
            flush_delay: std::time::Duration::ZERO,
        }
    }
}

impl MemDevice {
    /// A zeroed device.
    pub fn new(opts: MemOptions) -> Result<MemDevice> {
        if !opts.lba_size.is_power_of_two() || opts.lba_size < 512 {
            return Err(Error::BadSpec {
                spec: format!("lba_size={}", opts.lba_size),
                reason: "LBA size must be a power of two of at least 512".into(),
            });
        }
        if opts.capacity < u64::from(opts.lba_size) {
            return Err(Error::BadSpec {
                spec: format!("capacity={}", opts.capacity),
                reason: "capacity smaller than one block".into(),
            });
        }
        let geom = Geometry {
            lba_size: opts.lba_size,
            lba_count: opts.capacity / u64::from(opts.lba_size),
            atomic_write_lbas: opts.atomic_write_lbas.max(1),
            max_transfer: opts.max_transfer.max(opts.lba_size),
        };
        let chunk = (opts.lba_size as usize).max(4096);
        Ok(Self::from_parts(
            geom,
            (opts.cache, opts.reorder, opts.seed, opts.flush_delay),
            Sparse::new(chunk),
        ))
    }

    /// A device of `capacity` bytes with `lba_size`-byte blocks and default options.
    pub fn with_capacity(capacity: u64, lba_size: u32) -> Result<MemDevice> {
        MemDevice::new(MemOptions {
            capacity,
            lba_size,
            ..MemOptions::default()
        })
    }

    fn from_parts(
        geom: Geometry,
        (cache, reorder, seed, flush_delay): (CacheModel, bool, u64, std::time::Duration),
        durable: Sparse,
    ) -> MemDevice {
        MemDevice {
            shared: Arc::new(Shared {
                geom,
                cache,
                reorder,
                seed,
                flush_delay,
                next_qp: AtomicU64::new(0),
                state: Mutex::new(State {
                    current: durable.clone(),
                    durable,
                    pending: Vec::new(),
                    powered: true,
                    stats: MemStats::default(),
                }),
                name: format!("mem:{}", geom.capacity()),
            }),
        }
    }

    fn params(&self) -> (CacheModel, bool, u64, std::time::Duration) {
        let s = &self.shared;
        (s.cache, s.reorder, s.seed, s.flush_delay)
    }

    /// Counters since creation or the last [`MemDevice::reset_stats`].
    pub fn stats(&self) -> MemStats {
        self.shared.state.lock().stats
    }

    /// Zeroes the counters.
    pub fn reset_stats(&self) {
        self.shared.state.lock().stats = MemStats::default();
    }

    /// Bytes of memory holding device contents (current view).
    pub fn stored_bytes(&self) -> u64 {
        self.shared.state.lock().current.stored_bytes()
    }

    /// Number of mutations not yet made durable by a Flush.
    pub fn unflushed(&self) -> usize {
        self.shared.state.lock().pending.len()
    }

    /// Cuts the power: every later or still-queued command fails with [`Error::Gone`].
    /// The contents stay frozen for [`MemDevice::power_cut`].
    pub fn kill(&self) {
        self.shared.state.lock().powered = false;
    }

    /// Whether the device still has power.
    pub fn is_powered(&self) -> bool {
        self.shared.state.lock().powered
    }

    /// Cuts the power (as [`MemDevice::kill`]) and returns a new, powered device holding what
    /// survived: the durable contents plus unflushed writes treated per `policy`.
    pub fn power_cut(&self, policy: CutPolicy, rng: &mut impl Rng) -> MemDevice {
        let mut st = self.shared.state.lock();
        st.powered = false;
        let mut image = st.durable.clone();
        let lba = u64::from(self.shared.geom.lba_size);
        let unit = lba * u64::from(self.shared.geom.atomic_write_lbas);
        for p in &st.pending {
            let fate = match policy {
                CutPolicy::DropAll => 0,
                CutPolicy::KeepAll => 1,
                CutPolicy::Random => rng.gen_range(0..3),
            };
            match fate {
                0 => {}
                1 => apply(&mut image, p.off, p.len, p.data.as_deref()),
                _ => {
                    // Torn: each atomic unit (aligned to the unit size) independently.
                    let mut off = p.off;
                    let end = p.off + p.len;
                    while off < end {
                        let next = ((off / unit) + 1) * unit;
                        let to = next.min(end);
                        if rng.gen_bool(0.5) {
                            let data = p.data.as_deref().map(|d| {
                                let a = (off - p.off) as usize;
                                &d[a..a + (to - off) as usize]
                            });
                            apply(&mut image, off, to - off, data);
                        }
                        off = to;
                    }
                }
            }
        }
        drop(st);
        MemDevice::from_parts(self.shared.geom, self.params(), image)
    }

    /// An independent copy of this device as it stands, including its unflushed writes.
    pub fn duplicate(&self) -> MemDevice {
        let st = self.shared.state.lock();
        let dev = MemDevice::from_parts(self.shared.geom, self.params(), st.durable.clone());
        {
            let mut nst = dev.shared.state.lock();
            nst.current = st.current.clone();
            nst.pending = st.pending.clone();
        }
        dev
    }

    /// Reads `out.len()` bytes at byte offset `off` of the current contents, outside any
    /// queue pair (for tests and corruption tools). Does not count in the stats.
    pub fn peek(&self, off: u64, out: &mut [u8]) {
        self.shared.state.lock().current.read(off, out);
    }

    /// Overwrites bytes at `off` in both the current and the durable contents, outside any
    /// queue pair: a way for tests to damage an image.
    pub fn poke(&self, off: u64, data: &[u8]) {
        let mut st = self.shared.state.lock();
        st.current.write(off, data);
        st.durable.write(off, data);
    }

    fn execute(&self, op: Op, tag: u64) -> Completion {
        let geom = self.shared.geom;
        let lba_size = u64::from(geom.lba_size);
        let mut st = self.shared.state.lock();
        if !st.powered {
            return Completion {
                tag,
                result: Err(Error::Gone),
                buf: op.into_buf(),
            };
        }
        let write_through = self.shared.cache == CacheModel::WriteThrough;
        match op {
            Op::Read { lba, mut buf } => {
                st.current.read(lba.0 * lba_size, buf.as_mut_slice());
                st.stats.reads += 1;
                st.stats.bytes_read += buf.len() as u64;
                Completion {
                    tag,
                    result: Ok(()),
                    buf: Some(buf),
                }
            }
            Op::Write { lba, buf } => {
                let off = lba.0 * lba_size;
                st.current.write(off, buf.as_slice());
                if write_through {
                    st.durable.write(off, buf.as_slice());
                } else {
                    st.pending.push(Pending {
                        off,
                        len: buf.len() as u64,
                        data: Some(Arc::from(buf.as_slice())),
                    });
                }
                st.stats.writes += 1;
                st.stats.bytes_written += buf.len() as u64;
                Completion {
                    tag,
                    result: Ok(()),
                    buf: Some(buf),
                }
            }
            Op::Flush => {
                let pending = std::mem::take(&mut st.pending);
                for p in &pending {
                    apply(&mut st.durable, p.off, p.len, p.data.as_deref());
                }
                st.stats.flushes += 1;
                Completion {
                    tag,
                    result: Ok(()),
                    buf: None,
                }
            }
            Op::Deallocate { lba, count } | Op::WriteZeroes { lba, count } => {
                // Both read back as zeroes afterwards (driver semantics, rule 4).
                let (off, len) = (lba.0 * lba_size, count * lba_size);
                st.current.zero(off, len);
                if write_through {
                    st.durable.zero(off, len);
                } else {
                    st.pending.push(Pending {
                        off,
                        len,
                        data: None,
                    });
                }
                st.stats.zeroes += 1;
                Completion {
                    tag,
                    result: Ok(()),
                    buf: None,
                }
            }
        }
    }
}

fn apply(image: &mut Sparse, off: u64, len: u64, data: Option<&[u8]>) {
    match data {
        Some(d) => image.write(off, d),
        None => image.zero(off, len),
    }
}

impl Device for MemDevice {
    fn geometry(&self) -> Geometry {
        self.shared.geom
    }

    fn open_qpair(&self, depth: u32) -> Result<Box<dyn QueuePair>> {
        let n = self.shared.next_qp.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(MemQueuePair {
            dev: self.clone(),
            depth: depth.max(1) as usize,
            queued: Vec::new(),
            done: std::collections::VecDeque::new(),
            rng: SmallRng::seed_from_u64(self.shared.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        }))
    }

    fn describe(&self) -> String {
        self.shared.name.clone()
    }
}

struct MemQueuePair {
    dev: MemDevice,
    depth: usize,
    queued: Vec<(Op, u64)>,
    done: std::collections::VecDeque<Completion>,
    rng: SmallRng,
}

impl QueuePair for MemQueuePair {
    fn submit(&mut self, op: Op, tag: u64) -> std::result::Result<(), SubmitError> {
        if let Err(error) = op.validate(&self.dev.shared.geom) {
            return Err(SubmitError { error, op });
        }
        if self.in_flight() >= self.depth {
            return Err(SubmitError {
                error: Error::QueueFull,
                op,
            });
        }
        self.queued.push((op, tag));
        Ok(())
    }

    fn poll(&mut self, max: usize, out: &mut Vec<Completion>) -> usize {
        if !self.queued.is_empty() {
            if self.dev.shared.reorder {
                self.queued.shuffle(&mut self.rng);
            }
            for (op, tag) in self.queued.drain(..) {
                if matches!(op, Op::Flush) && !self.dev.shared.flush_delay.is_zero() {
                    std::thread::sleep(self.dev.shared.flush_delay);
                }
                let c = self.dev.execute(op, tag);
                self.done.push_back(c);
            }
        }
        let n = max.min(self.done.len());
        out.extend(self.done.drain(..n));
        n
    }

    fn in_flight(&self) -> usize {
        self.queued.len() + self.done.len()
    }

    fn depth(&self) -> usize {
        self.depth
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{run_one, DmaBuf, Lba};
    use rand::rngs::StdRng;

    fn dev(cap: u64, lba: u32) -> MemDevice {
        MemDevice::with_capacity(cap, lba).unwrap()
    }

    fn write(qp: &mut dyn QueuePair, lba: u64, byte: u8, len: usize) {
        run_one(
            qp,
            Op::Write {
                lba: Lba(lba),
                buf: DmaBuf::from_slice(&vec![byte; len]),
            },
        )
        .unwrap();
    }

    fn read(qp: &mut dyn QueuePair, lba: u64, len: usize) -> Vec<u8> {
        run_one(
            qp,
            Op::Read {
                lba: Lba(lba),
                buf: DmaBuf::zeroed(len),
            },
        )
        .unwrap()
        .unwrap()
        .as_slice()
        .to_vec()
    }

    #[test]
    fn read_back_and_zero() {
        let d = dev(1 << 20, 512);
        let mut qp = d.open_qpair(8).unwrap();
        write(qp.as_mut(), 3, 0xab, 1024);
        assert_eq!(read(qp.as_mut(), 3, 1024), vec![0xab; 1024]);
        assert_eq!(read(qp.as_mut(), 2, 512), vec![0; 512]);
        run_one(
            qp.as_mut(),
            Op::WriteZeroes {
                lba: Lba(4),
                count: 1,
            },
        )
        .unwrap();
        let r = read(qp.as_mut(), 3, 1024);
        assert_eq!(&r[..512], &[0xab; 512][..]);
        assert_eq!(&r[512..], &[0; 512][..]);
    }

    #[test]
    fn sparse_terabyte_is_cheap() {
        let d = dev(1 << 40, 4096);
        let mut qp = d.open_qpair(8).unwrap();
        let last = d.geometry().lba_count - 1;
        write(qp.as_mut(), last, 1, 4096);
        run_one(
            qp.as_mut(),
            Op::Deallocate {
                lba: Lba(0),
                count: last,
            },
        )
        .unwrap();
        assert!(d.stored_bytes() <= 8192);
        assert_eq!(read(qp.as_mut(), last, 4096), vec![1; 4096]);
    }

    #[test]
    fn validation() {
        let d = dev(1 << 20, 4096);
        let mut qp = d.open_qpair(8).unwrap();
        let e = qp
            .submit(
                Op::Read {
                    lba: Lba(256),
                    buf: DmaBuf::zeroed(4096),
                },
                0,
            )
            .unwrap_err();
        assert!(matches!(e.error, Error::OutOfRange { .. }));
        assert_eq!(e.op.into_buf().unwrap().len(), 4096);
        let e = qp
            .submit(
                Op::Write {
                    lba: Lba(0),
                    buf: DmaBuf::zeroed(100),
                },
                0,
            )
            .unwrap_err();
        assert!(matches!(e.error, Error::Misaligned { .. }));
    }

    #[test]
    fn queue_full_and_unordered_completion() {
        let d = dev(1 << 20, 4096);
        let mut qp = d.open_qpair(4).unwrap();
        for t in 0..4 {
            qp.submit(Op::Flush, t).unwrap();
        }
        let e = qp.submit(Op::Flush, 9).unwrap_err();
        assert!(matches!(e.error, Error::QueueFull));
        let mut out = Vec::new();
        while qp.in_flight() > 0 {
            qp.poll(2, &mut out);
        }
        let mut tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
        tags.sort();
        assert_eq!(tags, vec![0, 1, 2, 3]);
    }

    #[test]
    fn power_cut_respects_flush() {
        let d = dev(1 << 20, 512);
        let mut qp = d.open_qpair(8).unwrap();
        write(qp.as_mut(), 0, 1, 512);
        run_one(qp.as_mut(), Op::Flush).unwrap();
        write(qp.as_mut(), 0, 2, 512);
        write(qp.as_mut(), 8, 3, 4096);
        assert_eq!(d.unflushed(), 2);
        let mut rng = StdRng::seed_from_u64(1);
        let dropped = d.power_cut(CutPolicy::DropAll, &mut rng);
        let mut q2 = dropped.open_qpair(4).unwrap();
        assert_eq!(read(q2.as_mut(), 0, 512), vec![1; 512]);
        assert_eq!(read(q2.as_mut(), 8, 512), vec![0; 512]);
        let kept = d.power_cut(CutPolicy::KeepAll, &mut rng);
        let mut q3 = kept.open_qpair(4).unwrap();
        assert_eq!(read(q3.as_mut(), 0, 512), vec![2; 512]);
        assert_eq!(read(q3.as_mut(), 8, 4096), vec![3; 4096]);
        // The original device is dead now.
        let e = run_one(qp.as_mut(), Op::Flush).unwrap_err();
        assert!(matches!(e, Error::Gone));
    }

    #[test]
    fn torn_writes_tear_at_lba_granularity() {
        let mut seen_torn = false;
        for seed in 0..64 {
            let d = dev(1 << 20, 512);
            let mut qp = d.open_qpair(8).unwrap();
            write(qp.as_mut(), 0, 7, 8 * 512);
            let mut rng = StdRng::seed_from_u64(seed);
            let img = d.power_cut(CutPolicy::Random, &mut rng);
            let mut q = img.open_qpair(4).unwrap();
            let r = read(q.as_mut(), 0, 8 * 512);
            for lba in r.chunks(512) {
                assert!(lba.iter().all(|&b| b == 7) || lba.iter().all(|&b| b == 0));
            }
            let kept = r.chunks(512).filter(|c| c[0] == 7).count();
            if kept != 0 && kept != 8 {
                seen_torn = true;
            }
        }
        assert!(seen_torn, "Random policy never tore a multi-LBA write");
    }

    #[test]
    fn sparse_zero_edges() {
        let mut s = Sparse::new(4096);
        s.write(0, &[1u8; 3 * 4096]);
        s.zero(100, 200);
        s.zero(4000, 200);
        let mut out = vec![0u8; 3 * 4096];
        s.read(0, &mut out);
        for (i, b) in out.iter().enumerate() {
            let zeroed = (100..300).contains(&i) || (4000..4200).contains(&i);
            assert_eq!(*b, if zeroed { 0 } else { 1 }, "byte {i}");
        }
        s.zero(4096, 4096);
        assert_eq!(s.map.len(), 2);
    }
}
