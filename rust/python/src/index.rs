//! Building, opening and searching index directories: `IndexBuilder`, `DenseWriter`,
//! `add_hnsw` (a graph for an existing index), `verify_index`, `CorpusBatches`, `Index`.
//!
//! A build runs with the GIL released, and asks Python now and then whether a signal
//! arrived ([`Interrupt`]): Ctrl-C stops it within a fraction of a second (but for
//! tantivy's final flush of the BM25 segments, which runs to its end), removes what it
//! wrote, and raises the `KeyboardInterrupt` the signal raised.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use numpy::PyUntypedArrayMethods;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use searchr1_core as core;

use crate::arrays::row_major;
use crate::errors::{Error, InputError, Result};

/// Search results as the `(id, score, contents)` tuples Python receives.
type HitTuples = Vec<Vec<(String, f32, String)>>;

fn hit_tuples(hits: Vec<Vec<core::ScoredPassage>>) -> HitTuples {
    hits.into_iter()
        .map(|row| row.into_iter().map(|h| (h.id, h.score, h.contents)).collect())
        .collect()
}

/// The core's defaults of the build settings, keyed by `Retriever.build`'s parameter
/// names: `_core.DEFAULTS`, for display. A `None` argument here means these values.
pub(crate) fn defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let bm25 = core::Bm25Settings::default();
    let build = core::BuildOptions::default();
    let hnsw = core::graph::HnswSettings::default();
    let out = PyDict::new(py);
    out.set_item("k1", decimal(bm25.k1))?;
    out.set_item("b", decimal(bm25.b))?;
    out.set_item("stem", bm25.stem)?;
    out.set_item("stopwords", bm25.stopwords)?;
    out.set_item("memory_mb", build.memory_budget >> 20)?;
    out.set_item("dtype", core::dense::DType::default().name())?;
    out.set_item("hnsw_dtype", hnsw.dtype.name())?;
    out.set_item("connectivity", hnsw.connectivity)?;
    out.set_item("ef_construction", hnsw.expansion_add)?;
    out.set_item("ef_search", hnsw.expansion_search)?;
    Ok(out)
}

/// `x` as the float of the same shortest decimal form: 0.9, not 0.8999999761581421.
fn decimal(x: f32) -> f64 {
    x.to_string().parse().expect("a float's decimal form parses")
}

/// A [`core::Cancel`] that asks Python whether a signal arrived, and keeps the
/// exception its handler raised (`KeyboardInterrupt` for Ctrl-C) to raise once the core
/// has stopped and cleaned up. Python runs signal handlers on its main thread only, so
/// this stops builds started there (as the command line's are).
#[derive(Clone)]
struct Interrupt {
    cancel: core::Cancel,
    raised: Arc<Mutex<Option<PyErr>>>,
}

impl Interrupt {
    fn new() -> Self {
        let raised = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&raised);
        let cancel = core::Cancel::new(move || {
            Python::attach(|py| match py.check_signals() {
                Ok(()) => false,
                Err(e) => {
                    *slot.lock().expect("never poisoned") = Some(e);
                    true
                }
            })
        });
        Interrupt { cancel, raised }
    }

    /// `result` as a binding result, with the signal's exception for a cancel.
    fn result<T>(&self, result: std::result::Result<T, core::IndexError>) -> Result<T> {
        match result {
            Err(core::IndexError::Cancelled) => match self.raised.lock().expect("never poisoned").take() {
                Some(e) => Err(Error::Py(e)),
                None => Err(core::IndexError::Cancelled.into()),
            },
            other => Ok(other?),
        }
    }
}

/// BuildOptions from `IndexBuilder`'s arguments; `None` takes the
/// core's default.
#[allow(clippy::too_many_arguments)]
fn build_options(
    bm25: bool,
    k1: Option<f32>,
    b: Option<f32>,
    stem: Option<bool>,
    stopwords: Option<bool>,
    threads: Option<usize>,
    memory_mb: Option<usize>,
    skip_bad: bool,
    progress: bool,
    overwrite: bool,
    cancel: core::Cancel,
) -> core::BuildOptions {
    let defaults = core::BuildOptions::default();
    let bm25_defaults = core::Bm25Settings::default();
    core::BuildOptions {
        bm25: bm25.then_some(core::Bm25Settings {
            k1: k1.unwrap_or(bm25_defaults.k1),
            b: b.unwrap_or(bm25_defaults.b),
            stem: stem.unwrap_or(bm25_defaults.stem),
            stopwords: stopwords.unwrap_or(bm25_defaults.stopwords),
        }),
        threads: threads.unwrap_or(defaults.threads),
        memory_budget: memory_mb.map_or(defaults.memory_budget, |mb| mb << 20),
        skip_bad,
        progress,
        overwrite,
        cancel,
    }
}

fn manifest_json(manifest: &core::Manifest) -> String {
    serde_json::to_string(manifest).expect("manifest serialises")
}

/// An index being built: passages (and BM25) on creation, then optionally dense vectors
/// and a graph, each stage committed by an incomplete manifest; `finish` marks it
/// complete. Aborted, interrupted, or dropped unfinished, it removes what the build
/// wrote.
#[pyclass(module = "searchr1._core", name = "IndexBuilder")]
pub(crate) struct PyIndexBuilder {
    builder: Option<core::IndexBuilder>,
    interrupt: Interrupt,
}

impl PyIndexBuilder {
    fn builder(&mut self) -> Result<&mut core::IndexBuilder> {
        self.builder
            .as_mut()
            .ok_or_else(|| Error::Py(InputError::new_err("this IndexBuilder is finished or aborted")))
    }
}

#[pymethods]
impl PyIndexBuilder {
    #[new]
    #[pyo3(signature = (corpus, out, *, bm25 = true, k1 = None, b = None, stem = None, stopwords = None, threads = None, memory_mb = None, skip_bad = false, progress = false, overwrite = false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        corpus: PathBuf,
        out: PathBuf,
        bm25: bool,
        k1: Option<f32>,
        b: Option<f32>,
        stem: Option<bool>,
        stopwords: Option<bool>,
        threads: Option<usize>,
        memory_mb: Option<usize>,
        skip_bad: bool,
        progress: bool,
        overwrite: bool,
    ) -> Result<Self> {
        let interrupt = Interrupt::new();
        let options = build_options(
            bm25,
            k1,
            b,
            stem,
            stopwords,
            threads,
            memory_mb,
            skip_bad,
            progress,
            overwrite,
            interrupt.cancel.clone(),
        );
        let builder = interrupt.result(py.detach(|| core::IndexBuilder::create(&corpus, &out, &options)))?;
        Ok(PyIndexBuilder {
            builder: Some(builder),
            interrupt,
        })
    }

    /// The manifest as it stands (incomplete until `finish`), as JSON text.
    #[getter]
    fn manifest(&mut self) -> Result<String> {
        Ok(manifest_json(self.builder()?.manifest()))
    }

    /// Records the vectors a `DenseWriter` wrote into the index's `dense` directory
    /// (reading them back for their checksum).
    fn add_dense(
        &mut self,
        py: Python<'_>,
        dim: usize,
        dtype: Option<&str>,
        rows: u64,
        encoder: &str,
    ) -> Result<()> {
        let dense = dense_info(dim, dtype, rows, encoder)?;
        let interrupt = self.interrupt.clone();
        let builder = self.builder()?;
        interrupt.result(py.detach(|| builder.add_dense(dense)))
    }

    /// Builds an HNSW graph (usearch's) over the dense vectors, adding rows on
    /// `threads` threads.
    #[pyo3(signature = (*, dtype = None, connectivity = None, expansion_add = None, expansion_search = None, threads = None, progress = false))]
    #[allow(clippy::too_many_arguments)]
    fn add_hnsw(
        &mut self,
        py: Python<'_>,
        dtype: Option<&str>,
        connectivity: Option<usize>,
        expansion_add: Option<usize>,
        expansion_search: Option<usize>,
        threads: Option<usize>,
        progress: bool,
    ) -> Result<()> {
        let settings = hnsw_settings(dtype, connectivity, expansion_add, expansion_search)?;
        let threads = threads.unwrap_or_else(|| core::BuildOptions::default().threads);
        let interrupt = self.interrupt.clone();
        let builder = self.builder()?;
        interrupt.result(py.detach(|| builder.add_hnsw(settings, threads, progress)))
    }

    /// Writes the manifest marked complete, which commits the index; returns it as
    /// JSON text.
    fn finish(&mut self) -> Result<String> {
        self.builder()?;
        let builder = self.builder.take().expect("checked above");
        Ok(manifest_json(&builder.finish()?))
    }

    /// Removes what the build wrote (nothing once finished).
    fn abort(&mut self, py: Python<'_>) {
        if let Some(builder) = self.builder.take() {
            py.detach(|| drop(builder));
        }
    }
}

/// Writes the vectors of an index's passages, in corpus order, into `dir` (its `dense`
/// directory).
#[pyclass(module = "searchr1._core", name = "DenseWriter")]
pub(crate) struct PyDenseWriter(Option<core::dense::DenseWriter>);

impl PyDenseWriter {
    fn writer(&mut self) -> Result<&mut core::dense::DenseWriter> {
        self.0
            .as_mut()
            .ok_or_else(|| Error::Py(InputError::new_err("this DenseWriter is finished")))
    }
}

#[pymethods]
impl PyDenseWriter {
    #[new]
    #[pyo3(signature = (dir, dim, dtype = None))]
    fn new(dir: PathBuf, dim: usize, dtype: Option<&str>) -> Result<Self> {
        let dtype = dense_dtype(dtype)?;
        Ok(PyDenseWriter(Some(core::dense::DenseWriter::create(
            &dir, dim, dtype,
        )?)))
    }

    /// Appends the vectors of the next passages (float32, shape `[n, dim]`).
    fn add(&mut self, py: Python<'_>, vectors: numpy::PyReadonlyArray2<'_, f32>) -> Result<()> {
        let flat = row_major(vectors);
        let writer = self.writer()?;
        py.detach(|| writer.add(&flat))?;
        Ok(())
    }

    /// Rows written so far.
    #[getter]
    fn rows(&mut self) -> Result<usize> {
        Ok(self.writer()?.rows())
    }

    /// Flushes the files; returns the number of rows.
    fn finish(&mut self) -> Result<u64> {
        self.writer()?;
        let writer = self.0.take().expect("checked above");
        Ok(writer.finish()?)
    }
}

fn dense_info(
    dim: usize,
    dtype: Option<&str>,
    rows: u64,
    encoder: &str,
) -> Result<core::manifest::DenseInfo> {
    let encoder: serde_json::Value = serde_json::from_str(encoder)
        .map_err(|e| Error::Py(InputError::new_err(format!("encoder settings are not JSON: {e}"))))?;
    Ok(core::manifest::DenseInfo {
        vectors: core::dense::DenseSettings {
            dim,
            dtype: dense_dtype(dtype)?,
            rows,
        },
        encoder,
        hnsw: None,
    })
}

/// HnswSettings from `add_hnsw`'s arguments; `None` takes the core's default.
fn hnsw_settings(
    dtype: Option<&str>,
    connectivity: Option<usize>,
    expansion_add: Option<usize>,
    expansion_search: Option<usize>,
) -> Result<core::graph::HnswSettings> {
    let defaults = core::graph::HnswSettings::default();
    Ok(core::graph::HnswSettings {
        dtype: dtype.map_or(Ok(defaults.dtype), core::graph::Quantization::parse)?,
        connectivity: connectivity.unwrap_or(defaults.connectivity),
        expansion_add: expansion_add.unwrap_or(defaults.expansion_add),
        expansion_search: expansion_search.unwrap_or(defaults.expansion_search),
        ..defaults
    })
}

/// A vector dtype by name; `None` takes the core's default.
fn dense_dtype(name: Option<&str>) -> Result<core::dense::DType> {
    Ok(name.map_or(Ok(core::dense::DType::default()), core::dense::DType::parse)?)
}

/// Builds an HNSW graph (usearch's) over the dense vectors of the index `dir`,
/// replacing any graph it had (an older searchr1's graph must be rebuilt this way);
/// returns the manifest.
#[pyfunction]
#[pyo3(signature = (dir, *, dtype = None, connectivity = None, expansion_add = None, expansion_search = None, threads = None, progress = false))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_hnsw(
    py: Python<'_>,
    dir: PathBuf,
    dtype: Option<&str>,
    connectivity: Option<usize>,
    expansion_add: Option<usize>,
    expansion_search: Option<usize>,
    threads: Option<usize>,
    progress: bool,
) -> Result<String> {
    let settings = hnsw_settings(dtype, connectivity, expansion_add, expansion_search)?;
    let threads = threads.unwrap_or_else(|| core::BuildOptions::default().threads);
    let interrupt = Interrupt::new();
    let manifest = interrupt
        .result(py.detach(|| core::index::add_hnsw(&dir, settings, threads, progress, &interrupt.cancel)))?;
    Ok(manifest_json(&manifest))
}

/// Reads every file of the index `dir` against the checksums of its manifest; returns
/// `(files checked, their bytes, files recorded, problems)`.
#[pyfunction]
pub(crate) fn verify_index(py: Python<'_>, dir: PathBuf) -> Result<(usize, u64, usize, Vec<String>)> {
    let interrupt = Interrupt::new();
    let report = interrupt.result(py.detach(|| core::index::verify(&dir, &interrupt.cancel)))?;
    Ok((report.files, report.bytes, report.recorded, report.problems))
}

/// Reads a corpus in batches of `(id, contents)` pairs.
#[pyclass(unsendable, module = "searchr1._core", name = "CorpusBatches")]
pub(crate) struct PyCorpusBatches {
    reader: core::CorpusReader,
    batch_size: usize,
}

#[pymethods]
impl PyCorpusBatches {
    #[new]
    #[pyo3(signature = (path, batch_size = 1024, skip_bad = false))]
    fn new(path: PathBuf, batch_size: usize, skip_bad: bool) -> Result<Self> {
        let reader = core::CorpusReader::open(&path, skip_bad).map_err(core::IndexError::from)?;
        Ok(PyCorpusBatches {
            reader,
            batch_size: batch_size.max(1),
        })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self) -> Result<Option<Vec<(String, String)>>> {
        let mut batch = Vec::with_capacity(self.batch_size);
        for passage in self.reader.by_ref().take(self.batch_size) {
            let p = passage.map_err(core::IndexError::from)?;
            batch.push((p.id, p.contents));
        }
        Ok((!batch.is_empty()).then_some(batch))
    }

    /// Malformed lines skipped so far.
    #[getter]
    fn skipped(&self) -> u64 {
        self.reader.skipped()
    }
}

/// An opened index directory.
#[pyclass(frozen, module = "searchr1._core", name = "Index")]
pub(crate) struct PyIndex(core::IndexDir);

#[pymethods]
impl PyIndex {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> Result<Self> {
        Ok(PyIndex(py.detach(|| core::IndexDir::open(&path))?))
    }

    /// The manifest, as JSON text.
    #[getter]
    fn manifest(&self) -> String {
        manifest_json(self.0.manifest())
    }

    fn __len__(&self) -> usize {
        self.0.manifest().corpus.passages as usize
    }

    /// The terms `text` is indexed as.
    fn analyze(&self, text: &str) -> Result<Vec<String>> {
        Ok(self.0.bm25()?.analyze(text))
    }

    /// Dimensions of the dense vectors, or `None` without them.
    #[getter]
    fn dense_dim(&self) -> Option<usize> {
        self.0.dense().ok().map(|d| d.dim())
    }

    /// Sets the HNSW search breadth (efSearch) for later searches.
    fn set_ef_search(&self, n: usize) -> Result<()> {
        if self.0.set_ef_search(n) {
            Ok(())
        } else {
            Err(Error::Py(InputError::new_err("this index has no HNSW graph")))
        }
    }

    /// Whether the index has an HNSW graph for approximate dense search.
    #[getter]
    fn has_hnsw(&self) -> bool {
        self.0.has_hnsw()
    }

    /// Inner-product top `k` for each query vector (float32 `[n, dim]`): through the
    /// HNSW graph when there is one, unless `exact`.
    #[pyo3(signature = (queries, k, exact = false))]
    fn search_dense(
        &self,
        py: Python<'_>,
        queries: numpy::PyReadonlyArray2<'_, f32>,
        k: usize,
        exact: bool,
    ) -> Result<HitTuples> {
        let dim = self.0.dense()?.dim();
        if queries.shape()[1] != dim {
            return Err(Error::Py(InputError::new_err(format!(
                "query vectors have {} dimensions; the index has {dim}",
                queries.shape()[1]
            ))));
        }
        let flat = row_major(queries);
        let hits = py.detach(|| self.0.search_dense(&flat, k, exact))?;
        Ok(hit_tuples(hits))
    }

    /// BM25 top `k` of each query: lists of `(id, score, contents)`, best first.
    fn search_bm25(&self, py: Python<'_>, queries: Vec<String>, k: usize) -> Result<HitTuples> {
        let hits = py.detach(|| self.0.search_bm25(&queries, k))?;
        Ok(hit_tuples(hits))
    }
}
