//! `searchr1._core`: the Python binding of `searchr1-core`.
//!
//! Thin by design: arguments are converted to Rust values (numpy arrays are borrowed,
//! not copied), the work runs with the GIL released, and arrays go back to numpy
//! without copying. Errors map onto the exception hierarchy of `searchr1.errors`.

use pyo3::prelude::*;

mod arrays;
mod errors;
mod index;
mod pack;
mod pool;
mod tags;

/// The Rust core of searchr1.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULTS", index::defaults(m.py())?)?;
    m.add_class::<tags::PyAction>()?;
    m.add_class::<tags::PyStopScanner>()?;
    m.add_class::<tags::PyTokenStopChecker>()?;
    m.add_function(wrap_pyfunction!(tags::parse_action, m)?)?;
    m.add_function(wrap_pyfunction!(pack::pack_trajectories, m)?)?;
    m.add_class::<index::PyIndexBuilder>()?;
    m.add_class::<index::PyIndex>()?;
    m.add_class::<index::PyDenseWriter>()?;
    m.add_class::<index::PyCorpusBatches>()?;
    m.add_function(wrap_pyfunction!(index::add_hnsw, m)?)?;
    m.add_function(wrap_pyfunction!(index::verify_index, m)?)?;
    Ok(())
}
