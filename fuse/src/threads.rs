//! Request threads: one reads, the others wait until a request is about to block.
//!
//! The kernel hands each FUSE request to the thread that has waited longest in `read(2)`
//! on /dev/fuse (exclusive waiters are woken in FIFO order). With several idle threads
//! every request therefore goes to a different, cold thread, often on another CPU: on a
//! 2-vCPU machine a QD1 workload (4 KiB random writes, each a GETXATTR and a WRITE round
//! trip) ran at half the rate of a single thread. Several threads are still needed when
//! requests block (device reads, write-back, fsync): other requests, and concurrent
//! fsyncs that the store commits together, must not queue behind one.
//!
//! So the threads take turns as in a leader/followers pool. A thread that finishes a
//! request while another thread is reading parks here (after its reply is sent) instead
//! of going back to `read`; the reading thread handles fast requests itself and keeps
//! its CPU warm. A request that is about to block first wakes a parked thread to read in
//! its place: always for long waits (fsync, write-back), and for short ones (a read from
//! the device) only when requests are already waiting (`poll` on the session's
//! /dev/fuse descriptor), so a lone QD1 client never pays the hand-over.
//!
//! A parked thread also goes back to `read` on its own after [`PARK_MAX`], so all threads
//! see the end of the session (ENODEV) when the filesystem is unmounted.

use parking_lot::{Condvar, Mutex};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The longest a thread stays parked before it reads again.
pub(crate) const PARK_MAX: Duration = Duration::from_millis(100);

/// How long a request may block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Block {
    /// Device I/O of a few hundred microseconds (a read that missed the cache): hand over
    /// only if requests are waiting.
    Short,
    /// Write-back, a commit with flushes: always hand over.
    Long,
}

#[derive(Debug, Default)]
struct State {
    /// Scheduling is on (see [`Threads::start`]); off, every thread just reads again.
    on: bool,
    /// Threads reading /dev/fuse (or on their way back to it).
    readers: usize,
    /// Threads parked here.
    parked: usize,
    /// Wake-ups sent and not yet taken by a parked thread.
    wakeups: usize,
}

/// The shared scheduling state of the request threads of one session.
#[derive(Debug)]
pub(crate) struct Threads {
    st: Mutex<State>,
    cv: Condvar,
    /// A duplicate of the session's /dev/fuse descriptor, to see whether requests wait.
    fd: OnceLock<OwnedFd>,
    park_max: Duration,
}

impl Threads {
    /// Off until [`Threads::start`].
    pub(crate) fn new() -> Arc<Threads> {
        Threads::with_park_max(PARK_MAX)
    }

    fn with_park_max(park_max: Duration) -> Arc<Threads> {
        Arc::new(Threads {
            st: Mutex::new(State::default()),
            cv: Condvar::new(),
            fd: OnceLock::new(),
            park_max,
        })
    }

    /// Turns scheduling on for a session of `n` request threads, all about to read (call
    /// before the session runs), with `fd` (the session's /dev/fuse descriptor, duplicated
    /// here) to see whether requests wait.
    pub(crate) fn start(&self, n: usize, fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
        if let Some(fd) = fd {
            let _ = self.fd.set(fd.try_clone_to_owned()?);
        }
        let mut st = self.st.lock();
        st.on = true;
        st.readers = n;
        Ok(())
    }

    /// Whether requests wait to be read (unknown counts as yes).
    fn requests_waiting(&self) -> bool {
        let Some(fd) = self.fd.get() else {
            return true;
        };
        let mut p = libc::pollfd {
            fd: fd.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `p` is one valid pollfd for the duration of the call; a zero timeout
        // makes it a non-blocking check.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n != 0 && (n < 0 || p.revents != 0)
    }

    /// The calling thread has taken a request: it is no longer reading until the
    /// returned turn ends.
    pub(crate) fn enter(&self) -> Turn<'_> {
        let mut st = self.st.lock();
        let on = st.on;
        if on {
            st.readers = st.readers.saturating_sub(1);
        }
        Turn { t: self, on }
    }

    fn leave(&self) {
        let mut st = self.st.lock();
        if st.readers > 0 {
            // Someone reads: wait here until a request needs another thread.
            st.parked += 1;
            let until = Instant::now() + self.park_max;
            loop {
                if st.wakeups > 0 {
                    st.wakeups -= 1;
                    break;
                }
                if self.cv.wait_until(&mut st, until).timed_out() {
                    break;
                }
            }
            st.parked -= 1;
        }
        st.readers += 1;
    }
}

/// One request being handled; ends (and maybe parks the thread) on drop, which must come
/// after the reply was sent.
#[derive(Debug)]
pub(crate) struct Turn<'a> {
    t: &'a Threads,
    on: bool,
}

impl Turn<'_> {
    /// The request is about to wait for `how` long: make sure another thread reads
    /// requests meanwhile.
    pub(crate) fn blocking(&self, how: Block) {
        if !self.on {
            return;
        }
        let mut st = self.t.st.lock();
        if st.readers > 0 || st.parked <= st.wakeups {
            return;
        }
        if how == Block::Short {
            // poll(2) without the lock.
            drop(st);
            if !self.t.requests_waiting() {
                return;
            }
            st = self.t.st.lock();
            if st.readers > 0 || st.parked <= st.wakeups {
                return;
            }
        }
        st.wakeups += 1;
        self.t.cv.notify_one();
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if self.on {
            self.t.leave();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits until `n` threads are parked.
    fn until_parked(t: &Threads, n: usize) {
        while t.st.lock().parked < n {
            std::thread::yield_now();
        }
    }

    /// Wakes every parked thread (the end of a test).
    fn release(t: &Threads) {
        let mut st = t.st.lock();
        st.wakeups = st.parked;
        t.cv.notify_all();
    }

    #[test]
    fn one_reads_the_others_park_until_needed() {
        // Parked threads would come back by themselves after the timeout; make it long, so
        // only wake-ups move them here.
        let t = Threads::with_park_max(Duration::from_secs(600));
        t.start(3, None).unwrap();
        // Two threads take requests; the third keeps reading.
        let a = t.enter();
        let b = t.enter();
        assert_eq!(t.st.lock().readers, 1);
        std::thread::scope(|s| {
            // `a` finishes while another thread reads: it parks instead of reading.
            let ha = s.spawn(|| drop(a));
            until_parked(&t, 1);
            assert_eq!(t.st.lock().readers, 1);
            // The reader takes a request that will block for long: with `b` busy and
            // nobody reading, the parked thread is woken to read.
            let c = t.enter();
            assert_eq!(t.st.lock().readers, 0);
            c.blocking(Block::Long);
            ha.join().unwrap();
            assert_eq!(t.st.lock().readers, 1);
            // Another one does not wake anybody: somebody reads.
            c.blocking(Block::Long);
            assert_eq!(t.st.lock().wakeups, 0);
            let hb = s.spawn(|| drop(b));
            let hc = s.spawn(|| drop(c));
            until_parked(&t, 2);
            release(&t);
            hb.join().unwrap();
            hc.join().unwrap();
        });
        let st = t.st.lock();
        assert_eq!((st.readers, st.parked, st.wakeups), (3, 0, 0));
    }

    #[test]
    fn off_until_started() {
        let t = Threads::with_park_max(Duration::from_secs(600));
        let a = t.enter();
        let b = t.enter();
        b.blocking(Block::Long);
        drop(a);
        drop(b);
        assert_eq!(t.st.lock().readers, 0);
    }

    #[test]
    fn the_last_thread_reads_again() {
        let t = Threads::with_park_max(Duration::from_secs(600));
        t.start(1, None).unwrap();
        let a = t.enter();
        drop(a); // nobody else reads: no parking
        assert_eq!(t.st.lock().readers, 1);
    }

    #[test]
    fn parked_threads_come_back_by_themselves() {
        let t = Threads::with_park_max(Duration::from_millis(50));
        t.start(2, None).unwrap();
        let a = t.enter();
        let started = Instant::now();
        drop(a); // one other reader: parks, then times out
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(t.st.lock().readers, 2);
    }

    #[test]
    fn short_blocks_hand_over_only_when_requests_wait() {
        let t = Threads::with_park_max(Duration::from_secs(600));
        // A pipe stands in for /dev/fuse: readable = requests waiting.
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just created and nothing else owns them.
        let (r, w) = unsafe {
            use std::os::fd::FromRawFd;
            (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
        };
        t.start(2, Some(r.as_fd())).unwrap();
        std::thread::scope(|s| {
            let a = t.enter();
            let ha = s.spawn(|| drop(a));
            until_parked(&t, 1);
            let b = t.enter();
            b.blocking(Block::Short);
            assert_eq!(t.st.lock().wakeups, 0, "nothing waits: no hand-over");
            // SAFETY: writes one byte from a valid buffer to the pipe we own.
            let n = unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) };
            assert_eq!(n, 1);
            b.blocking(Block::Short);
            ha.join().unwrap();
            assert_eq!(t.st.lock().readers, 1, "the parked thread reads again");
            let hb = s.spawn(|| drop(b));
            until_parked(&t, 1);
            release(&t);
            hb.join().unwrap();
        });
        assert_eq!(t.st.lock().readers, 2);
    }
}
