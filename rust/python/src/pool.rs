//! Reuse of the memory behind packed arrays.
//!
//! `pack` writes about 100 MB for a batch of 512 rollouts of 6k tokens. Freshly mapped
//! memory costs a page fault (and the kernel zeroing a page) every 4 KiB, which takes
//! longer than the packing itself. So the arrays handed to numpy are views of vectors
//! owned by a small Python object; when numpy frees the last view, the vector returns
//! here, and the next batch is written into memory that is already mapped. At most
//! [`KEEP_BYTES`] per element type are kept.

use std::sync::Mutex;

use numpy::ndarray::ArrayView2;
use numpy::{Element, PyArray2};
use pyo3::prelude::*;

/// The most memory kept for reuse, per element type.
const KEEP_BYTES: usize = 1 << 30;

/// Element types with a pool of their own.
pub trait Pooled: Element + Copy + Send + 'static {
    fn pool() -> &'static Mutex<Vec<Vec<Self>>>;
    fn wrap(v: Vec<Self>) -> Storage;
}

static I64_POOL: Mutex<Vec<Vec<i64>>> = Mutex::new(Vec::new());
static F32_POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

impl Pooled for i64 {
    fn pool() -> &'static Mutex<Vec<Vec<Self>>> {
        &I64_POOL
    }
    fn wrap(v: Vec<Self>) -> Storage {
        Storage::I64(v)
    }
}

impl Pooled for f32 {
    fn pool() -> &'static Mutex<Vec<Vec<Self>>> {
        &F32_POOL
    }
    fn wrap(v: Vec<Self>) -> Storage {
        Storage::F32(v)
    }
}

/// A vector with room for at least `n` elements if the pool has one (the smallest such),
/// else an empty vector.
pub fn take<T: Pooled>(n: usize) -> Vec<T> {
    let mut pool = T::pool().lock().unwrap_or_else(|e| e.into_inner());
    let best = pool
        .iter()
        .enumerate()
        .filter(|(_, v)| v.capacity() >= n)
        .min_by_key(|(_, v)| v.capacity())
        .map(|(i, _)| i);
    best.map(|i| pool.swap_remove(i)).unwrap_or_default()
}

/// Returns `v`'s memory to the pool, unless the pool is full.
fn give<T: Pooled>(mut v: Vec<T>) {
    let mut pool = T::pool().lock().unwrap_or_else(|e| e.into_inner());
    let size = std::mem::size_of::<T>();
    let kept: usize = pool.iter().map(|v| v.capacity() * size).sum();
    if v.capacity() > 0 && kept + v.capacity() * size <= KEEP_BYTES {
        v.clear();
        pool.push(v);
    }
}

/// The vector behind numpy arrays; back to the pool when numpy lets go of it.
pub enum Storage {
    I64(Vec<i64>),
    F32(Vec<f32>),
    Empty,
}

/// The owner of the memory of packed arrays (their numpy `base`).
#[pyclass(frozen, module = "searchr1._core")]
pub struct PackBuffer {
    storage: Mutex<Storage>,
}

impl Drop for PackBuffer {
    fn drop(&mut self) {
        let storage = self.storage.get_mut().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(storage, Storage::Empty) {
            Storage::I64(v) => give(v),
            Storage::F32(v) => give(v),
            Storage::Empty => {}
        }
    }
}

/// `data` as a numpy array of shape `(rows, cols)` whose memory returns to the pool.
pub fn array2<'py, T: Pooled>(
    py: Python<'py>,
    data: Vec<T>,
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    assert_eq!(data.len(), rows * cols, "packed shape");
    let ptr = data.as_ptr();
    let owner = Bound::new(
        py,
        PackBuffer {
            storage: Mutex::new(T::wrap(data)),
        },
    )?;
    // SAFETY: the view covers exactly the vector's `rows * cols` initialised elements;
    // the vector's heap memory does not move when the vector moves into `owner`, and
    // `owner` becomes the array's base, so it outlives every view of the memory.
    unsafe {
        let view = ArrayView2::from_shape_ptr((rows, cols), ptr);
        Ok(PyArray2::borrow_from_array(&view, owner.into_any()))
    }
}
