//! A wrapper that injects faults into any device: I/O errors and a crash after N commands.
//!
//! The crash is what the power-cut sweeps use: the first N counted commands pass through,
//! command N+1 and every later one fail with [`Error::Gone`], and an optional hook runs once
//! at that moment (typically [`crate::mem::MemDevice::kill`], which freezes the inner
//! device so that commands still queued there never land).

use crate::{Completion, Device, DmaBuf, Error, Geometry, Op, QueuePair, Result, SubmitError};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Which commands advance the crash counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountMode {
    /// Only commands that can change the device (writes, flushes, zeroes, deallocates):
    /// a cut after a read is the same as a cut before it.
    Mutating,
    /// Every command.
    All,
}

/// Which commands an error-injection rule hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Read,
    Write,
    Flush,
    Any,
}

impl OpKind {
    fn matches(self, op: &Op) -> bool {
        match self {
            OpKind::Any => true,
            OpKind::Read => matches!(op, Op::Read { .. }),
            OpKind::Write => matches!(
                op,
                Op::Write { .. } | Op::WriteZeroes { .. } | Op::Deallocate { .. }
            ),
            OpKind::Flush => matches!(op, Op::Flush),
        }
    }
}

type Hook = Box<dyn Fn() + Send + Sync>;

/// The shared, adjustable fault plan of a [`FaultDevice`].
pub struct FaultPlan {
    mode: CountMode,
    counted: AtomicU64,
    crash_after: AtomicU64,
    crashed: AtomicBool,
    on_crash: Mutex<Option<Hook>>,
    /// (kind, probability in parts per million, permanent-after-first)
    errors: Mutex<Vec<ErrorRule>>,
    rng: Mutex<SmallRng>,
}

#[derive(Clone, Copy, Debug)]
struct ErrorRule {
    kind: OpKind,
    /// Fail commands of this kind once the counter passed this value.
    after: u64,
    /// Probability in parts per million (1_000_000 = always).
    ppm: u32,
}

impl fmt::Debug for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultPlan")
            .field("counted", &self.counted.load(Ordering::Relaxed))
            .field("crash_after", &self.crash_after.load(Ordering::Relaxed))
            .field("crashed", &self.crashed.load(Ordering::Relaxed))
            .finish()
    }
}

impl FaultPlan {
    /// A plan with no faults.
    pub fn new(mode: CountMode, seed: u64) -> Arc<FaultPlan> {
        Arc::new(FaultPlan {
            mode,
            counted: AtomicU64::new(0),
            crash_after: AtomicU64::new(u64::MAX),
            crashed: AtomicBool::new(false),
            on_crash: Mutex::new(None),
            errors: Mutex::new(Vec::new()),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
        })
    }

    /// Crash when command number `n + 1` (counted per the mode) is submitted.
    pub fn crash_after(&self, n: u64) {
        self.crash_after.store(n, Ordering::SeqCst);
    }

    /// Runs `hook` once, at the moment of the crash.
    pub fn on_crash(&self, hook: impl Fn() + Send + Sync + 'static) {
        *self.on_crash.lock() = Some(Box::new(hook));
    }

    /// Fails commands of `kind` with an injected error once `after` commands were counted,
    /// each with probability `ppm` / 1,000,000.
    pub fn fail(&self, kind: OpKind, after: u64, ppm: u32) {
        self.errors.lock().push(ErrorRule { kind, after, ppm });
    }

    /// Removes all error rules (the crash setting stays).
    pub fn clear_errors(&self) {
        self.errors.lock().clear();
    }

    /// Commands counted so far.
    pub fn counted(&self) -> u64 {
        self.counted.load(Ordering::SeqCst)
    }

    /// Whether the crash happened.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// Decides the fate of one command at submission: `Ok` to pass it on.
    fn admit(&self, op: &Op) -> Result<()> {
        if self.crashed() {
            return Err(Error::Gone);
        }
        let counts = match self.mode {
            CountMode::All => true,
            CountMode::Mutating => op.is_mutating(),
        };
        let n = if counts {
            self.counted.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.counted()
        };
        if counts && n > self.crash_after.load(Ordering::SeqCst) {
            if !self.crashed.swap(true, Ordering::SeqCst) {
                if let Some(h) = self.on_crash.lock().as_ref() {
                    h();
                }
            }
            return Err(Error::Gone);
        }
        let rules = self.errors.lock();
        for r in rules.iter() {
            if r.kind.matches(op) && n > r.after {
                let hit = r.ppm >= 1_000_000 || self.rng.lock().gen_range(0..1_000_000) < r.ppm;
                if hit {
                    return Err(Error::Injected(op.name()));
                }
            }
        }
        Ok(())
    }
}

/// A device whose commands pass through a [`FaultPlan`].
pub struct FaultDevice {
    inner: Arc<dyn Device>,
    plan: Arc<FaultPlan>,
}

impl fmt::Debug for FaultDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultDevice")
            .field("inner", &self.inner)
            .field("plan", &self.plan)
            .finish()
    }
}

impl FaultDevice {
    /// Wraps `inner`; the plan can be changed while the device is in use.
    pub fn new(inner: Arc<dyn Device>, plan: Arc<FaultPlan>) -> FaultDevice {
        FaultDevice { inner, plan }
    }

    /// The plan.
    pub fn plan(&self) -> &Arc<FaultPlan> {
        &self.plan
    }
}

impl Device for FaultDevice {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }

    fn open_qpair(&self, depth: u32) -> Result<Box<dyn QueuePair>> {
        Ok(Box::new(FaultQueuePair {
            inner: self.inner.open_qpair(depth)?,
            plan: Arc::clone(&self.plan),
            failed: VecDeque::new(),
        }))
    }

    fn alloc_buf(&self, len: usize) -> DmaBuf {
        self.inner.alloc_buf(len)
    }

    fn describe(&self) -> String {
        format!("fault({})", self.inner.describe())
    }
}

struct FaultQueuePair {
    inner: Box<dyn QueuePair>,
    plan: Arc<FaultPlan>,
    /// Commands failed by the plan, handed back at the next poll like device errors.
    failed: VecDeque<Completion>,
}

impl QueuePair for FaultQueuePair {
    fn submit(&mut self, op: Op, tag: u64) -> std::result::Result<(), SubmitError> {
        if self.in_flight() >= self.inner.depth() {
            return Err(SubmitError {
                error: Error::QueueFull,
                op,
            });
        }
        match self.plan.admit(&op) {
            Ok(()) => self.inner.submit(op, tag),
            Err(error) => {
                self.failed.push_back(Completion {
                    tag,
                    result: Err(error),
                    buf: op.into_buf(),
                });
                Ok(())
            }
        }
    }

    fn poll(&mut self, max: usize, out: &mut Vec<Completion>) -> usize {
        let mut n = 0;
        while n < max {
            match self.failed.pop_front() {
                Some(c) => {
                    out.push(c);
                    n += 1;
                }
                None => break,
            }
        }
        if n < max {
            n += self.inner.poll(max - n, out);
        }
        n
    }

    fn wait(&mut self, max: usize, out: &mut Vec<Completion>) -> usize {
        if !self.failed.is_empty() {
            return self.poll(max, out);
        }
        self.inner.wait(max, out)
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.failed.len()
    }

    fn depth(&self) -> usize {
        self.inner.depth()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemDevice;
    use crate::{run_one, Lba};

    #[test]
    fn crash_after_n_mutating_ops() {
        let mem = MemDevice::with_capacity(1 << 20, 4096).unwrap();
        let plan = FaultPlan::new(CountMode::Mutating, 1);
        plan.crash_after(2);
        let m2 = mem.clone();
        plan.on_crash(move || m2.kill());
        let dev = FaultDevice::new(Arc::new(mem.clone()), Arc::clone(&plan));
        let mut qp = dev.open_qpair(4).unwrap();
        let w = |b| Op::Write {
            lba: Lba(0),
            buf: DmaBuf::from_slice(&[b; 4096]),
        };
        run_one(qp.as_mut(), w(1)).unwrap();
        // Reads are not counted.
        run_one(
            qp.as_mut(),
            Op::Read {
                lba: Lba(0),
                buf: DmaBuf::zeroed(4096),
            },
        )
        .unwrap();
        run_one(qp.as_mut(), Op::Flush).unwrap();
        assert!(!plan.crashed());
        assert!(matches!(run_one(qp.as_mut(), w(2)), Err(Error::Gone)));
        assert!(plan.crashed());
        assert!(!mem.is_powered());
        assert!(matches!(run_one(qp.as_mut(), Op::Flush), Err(Error::Gone)));
    }

    #[test]
    fn injected_errors() {
        let mem = MemDevice::with_capacity(1 << 20, 4096).unwrap();
        let plan = FaultPlan::new(CountMode::All, 1);
        plan.fail(OpKind::Flush, 0, 1_000_000);
        let dev = FaultDevice::new(Arc::new(mem), Arc::clone(&plan));
        let mut qp = dev.open_qpair(4).unwrap();
        assert!(matches!(
            run_one(qp.as_mut(), Op::Flush),
            Err(Error::Injected("flush"))
        ));
        run_one(
            qp.as_mut(),
            Op::Write {
                lba: Lba(1),
                buf: DmaBuf::zeroed(4096),
            },
        )
        .unwrap();
        plan.clear_errors();
        run_one(qp.as_mut(), Op::Flush).unwrap();
    }
}
