//! Reading arguments that are numpy arrays (or other sequences of numbers).

use numpy::{PyArray1, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// A numpy array read in place, or values copied out of another sequence.
///
/// Arrays are read without rust-numpy's borrow registry: it costs more than the reading
/// itself for the thousands of small arrays in a batch of rollouts, and it never guarded
/// against Python code mutating an array anyway. Callers must not mutate the arrays
/// they pass while the call runs.
pub(crate) enum Values<'py, T: numpy::Element> {
    Array(Bound<'py, PyArray1<T>>),
    Owned(Vec<T>),
}

impl<'py, T: numpy::Element + for<'a> FromPyObject<'a, 'py> + Copy> Values<'py, T> {
    /// Reads a contiguous 1-D numpy array of exactly `T` in place; copies anything else.
    /// `what` names the argument in error messages.
    pub(crate) fn extract(obj: &Bound<'py, PyAny>, what: impl FnOnce() -> String) -> PyResult<Self> {
        if let Ok(array) = obj.cast::<PyArray1<T>>() {
            if array.is_contiguous() {
                return Ok(Values::Array(array.clone()));
            }
            return Ok(Values::Owned(array.to_vec().expect("1-D array")));
        }
        if obj.is_instance_of::<pyo3::types::PyString>() || obj.is_instance_of::<PyBytes>() {
            return Err(PyTypeError::new_err(format!(
                "{} must be a sequence of numbers, not a string",
                what()
            )));
        }
        obj.extract::<Vec<T>>()
            .map(Values::Owned)
            .map_err(|e| PyTypeError::new_err(format!("{} must be a 1-D sequence of numbers: {e}", what())))
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        match self {
            // SAFETY: contiguity was checked; the array is kept alive by `self`, and the
            // caller does not mutate it during the call (see the type's documentation).
            Values::Array(a) => unsafe { a.as_slice().expect("checked contiguous") },
            Values::Owned(v) => v,
        }
    }
}

/// A 2-D float32 array's values, row-major (copied: the work runs without the GIL).
pub(crate) fn row_major(array: numpy::PyReadonlyArray2<'_, f32>) -> Vec<f32> {
    match array.as_slice() {
        Ok(s) => s.to_vec(),
        Err(_) => array.as_array().iter().copied().collect(),
    }
}
