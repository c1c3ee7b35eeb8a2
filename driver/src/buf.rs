//! Aligned, owned I/O buffers that can be split into disjoint parts and joined again.
//!
//! An I/O that spans several clusters becomes several device commands on different LBAs;
//! splitting one buffer into views lets each command own its part without copying, and
//! `unsplit` gives the caller one buffer back afterwards (the idea of `bytes::BytesMut`).

use std::alloc::{self, Layout};
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

/// Alignment of every buffer: enough for O_DIRECT on 4 KiB-sector devices and for NVMe PRPs.
pub const DMA_ALIGN: usize = 4096;

/// One heap allocation, freed when the last view of it is dropped.
struct Alloc {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: `Alloc` owns plain bytes; access to them is coordinated by the `DmaBuf` views,
// each of which has exclusive access to a disjoint range.
unsafe impl Send for Alloc {}
// SAFETY: `Alloc` itself exposes no access to the bytes; see above.
unsafe impl Sync for Alloc {}

impl Drop for Alloc {
    fn drop(&mut self) {
        // SAFETY: `ptr` was returned by `alloc::alloc_zeroed` with exactly this layout and is
        // freed once, here, when the last `Arc` reference goes away.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// An owned view of `len` bytes at offset `off` of an aligned allocation.
///
/// Invariant: views of the same allocation never overlap, so each view may hand out `&mut`
/// access to its bytes.
pub struct DmaBuf {
    alloc: Arc<Alloc>,
    off: usize,
    len: usize,
}

impl DmaBuf {
    /// A zeroed buffer of `len` bytes aligned to [`DMA_ALIGN`].
    pub fn zeroed(len: usize) -> DmaBuf {
        // Round the allocation up so a zero-length request still gets a valid layout.
        let size = len.max(1).div_ceil(DMA_ALIGN) * DMA_ALIGN;
        let layout = match Layout::from_size_align(size, DMA_ALIGN) {
            Ok(l) => l,
            Err(_) => alloc::handle_alloc_error(Layout::new::<u8>()),
        };
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        DmaBuf {
            alloc: Arc::new(Alloc { ptr, layout }),
            off: 0,
            len,
        }
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> DmaBuf {
        let mut b = DmaBuf::zeroed(data.len());
        b.as_mut_slice().copy_from_slice(data);
        b
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: [off, off+len) lies inside the allocation (constructors and `split_off`
        // keep it so) and no other view covers it, so no `&mut` alias exists.
        unsafe { std::slice::from_raw_parts(self.alloc.ptr.as_ptr().add(self.off), self.len) }
    }

    /// The bytes, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only access to the range.
        unsafe { std::slice::from_raw_parts_mut(self.alloc.ptr.as_ptr().add(self.off), self.len) }
    }

    /// Raw pointer to the first byte, for backends that hand the buffer to the kernel or a
    /// device. The pointer is valid while this view lives.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: `off` is within the allocation (or one past its used part when len is 0).
        unsafe { self.alloc.ptr.as_ptr().add(self.off) }
    }

    /// Whether the first byte is aligned to `align` (a power of two).
    pub fn is_aligned_to(&self, align: usize) -> bool {
        (self.alloc.ptr.as_ptr() as usize + self.off).is_multiple_of(align)
    }

    /// Splits off the bytes from `at` to the end into a new view; `self` keeps `[0, at)`.
    ///
    /// # Panics
    /// If `at > len` (a caller bug, never driven by disk contents).
    pub fn split_off(&mut self, at: usize) -> DmaBuf {
        assert!(at <= self.len, "split_off {at} beyond length {}", self.len);
        let tail = DmaBuf {
            alloc: Arc::clone(&self.alloc),
            off: self.off + at,
            len: self.len - at,
        };
        self.len = at;
        tail
    }

    /// Joins `other` back onto the end of `self` when it is the adjacent view of the same
    /// allocation; otherwise hands `other` back unchanged.
    pub fn unsplit(&mut self, other: DmaBuf) -> Result<(), DmaBuf> {
        if Arc::ptr_eq(&self.alloc, &other.alloc) && self.off + self.len == other.off {
            self.len += other.len;
            Ok(())
        } else {
            Err(other)
        }
    }

    /// Shortens the view to `len` bytes (no-op if already shorter).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaBuf")
            .field("off", &self.off)
            .field("len", &self.len)
            .finish()
    }
}

impl AsRef<[u8]> for DmaBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsMut<[u8]> for DmaBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let b = DmaBuf::zeroed(10_000);
        assert!(b.is_aligned_to(DMA_ALIGN));
        assert!(b.as_slice().iter().all(|&x| x == 0));
        assert_eq!(b.len(), 10_000);
        let e = DmaBuf::zeroed(0);
        assert!(e.is_empty());
    }

    #[test]
    fn split_and_join() {
        let mut b = DmaBuf::from_slice(&(0..=255u8).collect::<Vec<_>>());
        let mut tail = b.split_off(100);
        assert_eq!(b.len(), 100);
        assert_eq!(tail.len(), 156);
        tail.as_mut_slice()[0] = 7;
        b.as_mut_slice()[99] = 9;
        let other = DmaBuf::zeroed(4);
        let other = b.unsplit(other).unwrap_err();
        assert_eq!(other.len(), 4);
        b.unsplit(tail).unwrap();
        assert_eq!(b.len(), 256);
        assert_eq!(b.as_slice()[99], 9);
        assert_eq!(b.as_slice()[100], 7);
        assert_eq!(b.as_slice()[255], 255);
    }

    #[test]
    fn join_out_of_order_is_refused() {
        let mut a = DmaBuf::zeroed(64);
        let mut b = a.split_off(32);
        let c = b.split_off(16);
        // a + c are not adjacent.
        let c = a.unsplit(c).unwrap_err();
        b.unsplit(c).unwrap();
        a.unsplit(b).unwrap();
        assert_eq!(a.len(), 64);
    }
}
