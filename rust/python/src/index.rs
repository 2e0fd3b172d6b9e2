//! Building, opening and searching index directories: `build_index`, `DenseWriter`,
//! `add_dense`, `add_hnsw`, `CorpusBatches`, `Index`.

use numpy::PyUntypedArrayMethods;
use pyo3::prelude::*;

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

/// Builds an index of `corpus` in `out`; returns the manifest as JSON text.
#[pyfunction]
#[pyo3(signature = (corpus, out, *, bm25 = true, k1 = 0.9, b = 0.4, stem = true, stopwords = true, threads = None, memory_mb = 512, skip_bad = false, progress = false))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_index(
    py: Python<'_>,
    corpus: std::path::PathBuf,
    out: std::path::PathBuf,
    bm25: bool,
    k1: f32,
    b: f32,
    stem: bool,
    stopwords: bool,
    threads: Option<usize>,
    memory_mb: usize,
    skip_bad: bool,
    progress: bool,
) -> Result<String> {
    let defaults = core::BuildOptions::default();
    let options = core::BuildOptions {
        bm25: bm25.then_some(core::Bm25Settings {
            k1,
            b,
            stem,
            stopwords,
        }),
        threads: threads.unwrap_or(defaults.threads),
        memory_budget: memory_mb << 20,
        skip_bad,
        progress,
    };
    let manifest = py.detach(|| core::index::build(&corpus, &out, &options))?;
    Ok(serde_json::to_string(&manifest).expect("manifest serialises"))
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
    fn new(dir: std::path::PathBuf, dim: usize, dtype: &str) -> Result<Self> {
        let dtype = core::dense::DType::parse(dtype)?;
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

/// Records the dense vectors of the index `dir` in its manifest; returns it as JSON.
#[pyfunction]
pub(crate) fn add_dense(
    dir: std::path::PathBuf,
    dim: usize,
    dtype: &str,
    rows: u64,
    encoder: &str,
) -> Result<String> {
    let encoder: serde_json::Value = serde_json::from_str(encoder)
        .map_err(|e| Error::Py(InputError::new_err(format!("encoder settings are not JSON: {e}"))))?;
    let settings = core::manifest::DenseInfo {
        vectors: core::dense::DenseSettings {
            dim,
            dtype: core::dense::DType::parse(dtype)?,
            rows,
        },
        encoder,
        hnsw: None,
    };
    let manifest = core::index::add_dense(&dir, settings)?;
    Ok(serde_json::to_string(&manifest).expect("manifest serialises"))
}

/// Builds an HNSW graph over the dense vectors of the index `dir`; returns the manifest.
#[pyfunction]
#[pyo3(signature = (dir, *, dtype = "i8", connectivity = 16, expansion_add = 128, expansion_search = 256, threads = None, progress = false))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_hnsw(
    py: Python<'_>,
    dir: std::path::PathBuf,
    dtype: &str,
    connectivity: usize,
    expansion_add: usize,
    expansion_search: usize,
    threads: Option<usize>,
    progress: bool,
) -> Result<String> {
    let settings = core::hnsw::HnswSettings {
        dtype: core::hnsw::Quantization::parse(dtype)?,
        connectivity,
        expansion_add,
        expansion_search,
    };
    let threads = threads.unwrap_or_else(|| core::BuildOptions::default().threads);
    let manifest = py.detach(|| core::index::add_hnsw(&dir, settings, threads, progress))?;
    Ok(serde_json::to_string(&manifest).expect("manifest serialises"))
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
    fn new(path: std::path::PathBuf, batch_size: usize, skip_bad: bool) -> Result<Self> {
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
    fn new(py: Python<'_>, path: std::path::PathBuf) -> Result<Self> {
        Ok(PyIndex(py.detach(|| core::IndexDir::open(&path))?))
    }

    /// The manifest, as JSON text.
    #[getter]
    fn manifest(&self) -> String {
        serde_json::to_string(self.0.manifest()).expect("manifest serialises")
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
