//! Preallocated batch buffers that workers fill slot by slot, in place.
//!
//! A [`BatchMem`] is allocated once and reused for every batch of every
//! epoch of its loader (a pool of `prefetch + 1` in a normal loop). Each worker writes only the slots of
//! the samples it was given: disjoint ranges, through raw pointers taken
//! once at allocation. The consumer reads a batch only after every slot was
//! reported done through a channel (which orders the writes before the read).

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

/// What the batch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputKind {
    /// `[B, 3, S, S]` f32, CHW, normalised: PyTorch's layout.
    #[default]
    F32Chw,
    /// `[B, S, S, 3]` f32, HWC, normalised: the layout of this crate's models.
    F32Hwc,
    /// `[B, S, S, 3]` u8, HWC, not normalised (normalise on the GPU).
    U8Hwc,
}

/// Buffers for one batch.
pub(crate) struct BatchMem {
    f32_data: Vec<f32>,
    u8_data: Vec<u8>,
    labels: Vec<u32>,
    indices: Vec<u32>,
    f32_ptr: *mut f32,
    u8_ptr: *mut u8,
    labels_ptr: *mut u32,
    indices_ptr: *mut u32,
    /// Values per view (3 * S * S).
    pub(crate) view_len: usize,
    /// Views per record.
    pub(crate) views: usize,
    /// Slots not yet written in the batch being filled.
    pub(crate) remaining: AtomicUsize,
}

// SAFETY: the raw pointers point into the Vecs owned by the same struct,
// which are never resized or accessed through references while shared;
// concurrent writers use disjoint slot ranges (`slot_*`), and readers read
// only after all writers finished (ordered by the completion channel).
unsafe impl Send for BatchMem {}
unsafe impl Sync for BatchMem {}

impl BatchMem {
    pub(crate) fn new(batch: usize, views: usize, view_len: usize, kind: OutputKind) -> Self {
        let n = batch * views * view_len;
        let mut f32_data = if kind != OutputKind::U8Hwc {
            vec![0f32; n]
        } else {
            Vec::new()
        };
        let mut u8_data = if kind == OutputKind::U8Hwc {
            vec![0u8; n]
        } else {
            Vec::new()
        };
        let mut labels = vec![0u32; batch];
        let mut indices = vec![0u32; batch];
        BatchMem {
            f32_ptr: f32_data.as_mut_ptr(),
            u8_ptr: u8_data.as_mut_ptr(),
            labels_ptr: labels.as_mut_ptr(),
            indices_ptr: indices.as_mut_ptr(),
            f32_data,
            u8_data,
            labels,
            indices,
            view_len,
            views,
            remaining: AtomicUsize::new(0),
        }
    }

    /// Capacity in records.
    pub(crate) fn capacity(&self) -> usize {
        self.labels.len()
    }

    /// The f32 output of slot `slot` (all its views).
    ///
    /// # Safety
    /// Only one thread may hold a slot at a time, and not while the consumer
    /// reads the batch.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slot_f32(&self, slot: usize) -> &mut [f32] {
        let len = self.views * self.view_len;
        assert!((slot + 1) * len <= self.f32_data.len());
        // SAFETY: in bounds (checked); exclusive per the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.f32_ptr.add(slot * len), len) }
    }

    /// The u8 output of slot `slot`.
    ///
    /// # Safety
    /// As [`BatchMem::slot_f32`].
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slot_u8(&self, slot: usize) -> &mut [u8] {
        let len = self.views * self.view_len;
        assert!((slot + 1) * len <= self.u8_data.len());
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts_mut(self.u8_ptr.add(slot * len), len) }
    }

    /// Records slot `slot`'s label and record index.
    ///
    /// # Safety
    /// As [`BatchMem::slot_f32`].
    pub(crate) unsafe fn set_meta(&self, slot: usize, label: u32, index: u32) {
        assert!(slot < self.labels.len());
        // SAFETY: in bounds; exclusive per the caller's contract.
        unsafe {
            *self.labels_ptr.add(slot) = label;
            *self.indices_ptr.add(slot) = index;
        }
    }
}

/// One batch, in epoch order. Its buffers go back to the loader's pool when
/// it is dropped, so holding a batch is free and a loop allocates nothing.
pub struct Batch {
    pub(crate) mem: Option<Arc<BatchMem>>,
    pub(crate) pool: crossbeam::channel::Sender<Arc<BatchMem>>,
    pub(crate) index: usize,
    pub(crate) len: usize,
    pub(crate) size: usize,
    pub(crate) kind: OutputKind,
}

impl Batch {
    fn mem(&self) -> &BatchMem {
        self.mem.as_ref().expect("present until drop")
    }

    /// Position of this batch in the epoch (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Records in this batch (the last batch of an epoch may be short).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch is empty (never, for batches the loader yields).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Network inputs per record (10 for ten-crop evaluation, else 1).
    pub fn views(&self) -> usize {
        self.mem().views
    }

    /// Output side.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Shape of [`Batch::images`]: `[len * views, 3, size, size]` (or
    /// `[len * views, size, size, 3]` for [`OutputKind::U8Hwc`]).
    pub fn shape(&self) -> [usize; 4] {
        let n = self.len * self.views();
        match self.kind {
            OutputKind::F32Chw => [n, 3, self.size, self.size],
            OutputKind::F32Hwc | OutputKind::U8Hwc => [n, self.size, self.size, 3],
        }
    }

    /// The images as f32, CHW or HWC as configured (empty for [`OutputKind::U8Hwc`]).
    pub fn images(&self) -> &[f32] {
        let m = self.mem();
        if self.kind == OutputKind::U8Hwc {
            return &[];
        }
        &m.f32_data[..self.len * m.views * m.view_len]
    }

    /// The images, HWC u8 (empty unless [`OutputKind::U8Hwc`]).
    pub fn images_u8(&self) -> &[u8] {
        let m = self.mem();
        if self.kind != OutputKind::U8Hwc {
            return &[];
        }
        &m.u8_data[..self.len * m.views * m.view_len]
    }

    /// Class labels, one per record.
    pub fn labels(&self) -> &[u32] {
        &self.mem().labels[..self.len]
    }

    /// Dataset indices of the records.
    pub fn indices(&self) -> &[u32] {
        &self.mem().indices[..self.len]
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("index", &self.index)
            .field("shape", &self.shape())
            .finish()
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if let Some(mem) = self.mem.take() {
            let _ = self.pool.send(mem); // the loader may be gone: then the buffer is freed
        }
    }
}
