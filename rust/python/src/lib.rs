//! `searchr1._core`: the Python binding of `searchr1-core`.
//!
//! Thin by design: arguments are converted to Rust values (numpy arrays are borrowed,
//! not copied), the work runs with the GIL released, and arrays go back to numpy
//! without copying. Errors map onto the exception hierarchy of `searchr1.errors`.

use std::borrow::Cow;

use numpy::{IntoPyArray, PyArray1, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use searchr1_core as core;

mod pool;

pyo3::import_exception!(searchr1.errors, InputError);
pyo3::import_exception!(searchr1.errors, PackError);
pyo3::import_exception!(searchr1.errors, CorpusError);
pyo3::import_exception!(searchr1.errors, IndexFormatError);

/// Every error a binding function can raise, mapped onto Python exceptions in one place.
enum Error {
    Tag(core::TagError),
    Pack(core::PackError),
    Index(core::IndexError),
    Py(PyErr),
}

impl From<core::IndexError> for Error {
    fn from(e: core::IndexError) -> Self {
        Error::Index(e)
    }
}

impl From<core::TagError> for Error {
    fn from(e: core::TagError) -> Self {
        Error::Tag(e)
    }
}

impl From<core::PackError> for Error {
    fn from(e: core::PackError) -> Self {
        Error::Pack(e)
    }
}

impl From<PyErr> for Error {
    fn from(e: PyErr) -> Self {
        Error::Py(e)
    }
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            Error::Tag(e) => InputError::new_err(e.to_string()),
            Error::Pack(e) => PackError::new_err(e.to_string()),
            Error::Index(e) => {
                use core::IndexError as E;
                let msg = e.to_string();
                match e {
                    E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                        pyo3::exceptions::PyFileNotFoundError::new_err(msg)
                    }
                    E::Io { .. } => pyo3::exceptions::PyOSError::new_err(msg),
                    E::Corpus(core::CorpusError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        pyo3::exceptions::PyFileNotFoundError::new_err(msg)
                    }
                    E::Corpus(core::CorpusError::Io { .. }) => pyo3::exceptions::PyOSError::new_err(msg),
                    E::Corpus(_) => CorpusError::new_err(msg),
                    E::Settings(_) => InputError::new_err(msg),
                    E::Corrupt(_) | E::Mismatch(_) | E::Tantivy(_) => IndexFormatError::new_err(msg),
                }
            }
            Error::Py(e) => e,
        }
    }
}

type Result<T> = std::result::Result<T, Error>;

/// A numpy array read in place, or values copied out of another sequence.
///
/// Arrays are read without rust-numpy's borrow registry: it costs more than the reading
/// itself for the thousands of small arrays in a batch of rollouts, and it never guarded
/// against Python code mutating an array anyway. Callers must not mutate the arrays
/// they pass while the call runs.
enum Values<'py, T: numpy::Element> {
    Array(Bound<'py, PyArray1<T>>),
    Owned(Vec<T>),
}

impl<'py, T: numpy::Element + for<'a> FromPyObject<'a, 'py> + Copy> Values<'py, T> {
    /// Reads a contiguous 1-D numpy array of exactly `T` in place; copies anything else.
    /// `what` names the argument in error messages.
    fn extract(obj: &Bound<'py, PyAny>, what: impl FnOnce() -> String) -> PyResult<Self> {
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

    fn as_slice(&self) -> &[T] {
        match self {
            // SAFETY: contiguity was checked; the array is kept alive by `self`, and the
            // caller does not mutate it during the call (see the type's documentation).
            Values::Array(a) => unsafe { a.as_slice().expect("checked contiguous") },
            Values::Owned(v) => v,
        }
    }
}

/// A 2-D float32 array's values, row-major (copied: the work runs without the GIL).
fn row_major(array: numpy::PyReadonlyArray2<'_, f32>) -> Vec<f32> {
    match array.as_slice() {
        Ok(s) => s.to_vec(),
        Err(_) => array.as_array().iter().copied().collect(),
    }
}

/// Search results as the `(id, score, contents)` tuples Python receives.
type HitTuples = Vec<Vec<(String, f32, String)>>;

fn hit_tuples(hits: Vec<Vec<core::ScoredPassage>>) -> HitTuples {
    hits.into_iter()
        .map(|row| row.into_iter().map(|h| (h.id, h.score, h.contents)).collect())
        .collect()
}

/// The action of one turn, as Search-R1 parses it.
#[pyclass(frozen, eq, module = "searchr1._core", name = "Action")]
#[derive(PartialEq)]
struct PyAction {
    kind: &'static str,
    content: Option<String>,
}

#[pymethods]
impl PyAction {
    #[new]
    #[pyo3(signature = (kind, content))]
    fn new(kind: &str, content: Option<String>) -> Result<Self> {
        let kind = match kind {
            "search" => "search",
            "answer" => "answer",
            "invalid" => "invalid",
            other => {
                return Err(Error::Py(InputError::new_err(format!(
                    "unknown action kind {other:?}; expected 'search', 'answer' or 'invalid'"
                ))))
            }
        };
        Ok(PyAction { kind, content })
    }

    /// `"search"`, `"answer"` or `"invalid"`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.kind
    }

    /// The text between the tags, stripped; `None` when the action is invalid.
    #[getter]
    fn content(&self) -> Option<&str> {
        self.content.as_deref()
    }

    fn __repr__(&self) -> String {
        match &self.content {
            Some(c) => format!("Action(kind={:?}, content={:?})", self.kind, c),
            None => format!("Action(kind={:?}, content=None)", self.kind),
        }
    }
}

/// The first `<search>…</search>` or `<answer>…</answer>` in `text`, as Search-R1 finds it.
#[pyfunction]
fn parse_action(py: Python<'_>, text: &str) -> PyAction {
    let action = if text.len() > 1 << 16 {
        py.detach(|| core::parse_action(text))
    } else {
        core::parse_action(text)
    };
    PyAction {
        kind: action.kind.as_str(),
        content: action.content,
    }
}

/// Finds the first complete stop string in text fed in chunks.
#[pyclass(module = "searchr1._core", name = "StopScanner")]
struct PyStopScanner(core::StopScanner);

#[pymethods]
impl PyStopScanner {
    #[new]
    fn new(stops: Vec<String>) -> Result<Self> {
        Ok(PyStopScanner(core::StopScanner::new(&stops)?))
    }

    /// Feeds `chunk`; returns the character offset just past the first stop string.
    fn feed(&mut self, chunk: &str) -> Option<usize> {
        self.0.feed(chunk)
    }

    /// Index of the stop string found, or `None`.
    #[getter]
    fn matched(&self) -> Option<usize> {
        self.0.matched()
    }

    /// The stop strings looked for.
    #[getter]
    fn stops(&self) -> Vec<String> {
        self.0.stops().to_vec()
    }
}

/// Token-level stop checking for a batch of sequences decoded in lockstep.
#[pyclass(module = "searchr1._core", name = "TokenStopChecker")]
struct PyTokenStopChecker(core::TokenStopChecker);

#[pymethods]
impl PyTokenStopChecker {
    #[new]
    fn new(vocab: Vec<Bound<'_, PyBytes>>, stops: Vec<String>) -> Result<Self> {
        let tokens: Vec<&[u8]> = vocab.iter().map(|b| b.as_bytes()).collect();
        Ok(PyTokenStopChecker(core::TokenStopChecker::new(&tokens, &stops)?))
    }

    /// Starts tracking `batch_size` new sequences.
    fn reset(&mut self, batch_size: usize) {
        self.0.reset(batch_size)
    }

    /// Advances sequences by one token each; see the stub for the meaning of the result.
    #[pyo3(signature = (token_ids, rows = None))]
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        token_ids: &Bound<'py, PyAny>,
        rows: Option<&Bound<'py, PyAny>>,
    ) -> Result<Bound<'py, PyArray1<i32>>> {
        let ids = Values::<i64>::extract(token_ids, || "token_ids".into())?;
        let rows = rows
            .map(|r| Values::<i64>::extract(r, || "rows".into()))
            .transpose()?;
        let rows: Option<Vec<usize>> = match &rows {
            Some(r) => Some(
                r.as_slice()
                    .iter()
                    .map(|&x| usize::try_from(x))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|_| InputError::new_err("rows must be non-negative"))?,
            ),
            None => None,
        };
        let mut out = vec![0i32; ids.as_slice().len()];
        self.0.step(ids.as_slice(), rows.as_deref(), &mut out)?;
        Ok(out.into_pyarray(py))
    }

    /// Which stop string sequence `row` stopped on, or `None` while it runs.
    fn stopped(&self, row: usize) -> Option<usize> {
        self.0.stopped(row)
    }

    /// The first stop string in each whole sequence; see the stub.
    fn find<'py>(
        &self,
        py: Python<'py>,
        sequences: &Bound<'py, PyAny>,
    ) -> Result<Vec<Option<(usize, usize, usize)>>> {
        let mut seqs = Vec::new();
        for (i, seq) in sequences.try_iter()?.enumerate() {
            seqs.push(Values::<i64>::extract(&seq?, || format!("sequences[{i}]"))?);
        }
        let slices: Vec<&[i64]> = seqs.iter().map(|s| s.as_slice()).collect();
        let found = py.detach(|| {
            slices
                .iter()
                .map(|ids| self.0.find(ids))
                .collect::<std::result::Result<Vec<_>, _>>()
        })?;
        Ok(found
            .into_iter()
            .map(|m| m.map(|m| (m.token, m.keep, m.which)))
            .collect())
    }

    /// Number of token ids in the vocabulary.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }

    /// Number of sequences tracked since the last `reset`.
    #[getter]
    fn batch_size(&self) -> usize {
        self.0.batch_size()
    }
}

/// One segment's inputs, held while the packing borrows them.
struct SegmentInput<'py> {
    ids: Values<'py, i64>,
    generated: bool,
    logprobs: Option<Values<'py, f32>>,
}

/// Packs trajectories (objects with `prompt_ids` and `segments`, each segment with
/// `ids`, `generated` and `logprobs`) into a dict of numpy arrays.
#[pyfunction]
#[pyo3(signature = (trajectories, max_prompt_len = None, max_response_len = None, pad_id = 0))]
fn pack_trajectories<'py>(
    py: Python<'py>,
    trajectories: &Bound<'py, PyAny>,
    max_prompt_len: Option<usize>,
    max_response_len: Option<usize>,
    pad_id: i64,
) -> Result<Bound<'py, PyDict>> {
    let mut inputs: Vec<(Values<'py, i64>, Vec<SegmentInput<'py>>)> = Vec::new();
    for (t, traj) in trajectories.try_iter()?.enumerate() {
        let traj = traj?;
        let where_ = |s: Option<usize>, what: &str| match s {
            Some(s) => format!("trajectory {t}, segment {s}: {what}"),
            None => format!("trajectory {t}: {what}"),
        };
        let prompt = Values::extract(&traj.getattr(intern!(py, "prompt_ids"))?, || {
            where_(None, "prompt_ids")
        })?;
        let mut segments = Vec::new();
        for (s, seg) in traj.getattr(intern!(py, "segments"))?.try_iter()?.enumerate() {
            let seg = seg?;
            let ids = Values::extract(&seg.getattr(intern!(py, "ids"))?, || where_(Some(s), "ids"))?;
            let generated: bool = seg.getattr(intern!(py, "generated"))?.extract()?;
            let lp = seg.getattr(intern!(py, "logprobs"))?;
            let logprobs = if lp.is_none() {
                None
            } else {
                Some(Values::extract(&lp, || where_(Some(s), "logprobs"))?)
            };
            segments.push(SegmentInput {
                ids,
                generated,
                logprobs,
            });
        }
        inputs.push((prompt, segments));
    }
    let trajs: Vec<core::Trajectory<'_>> = inputs
        .iter()
        .map(|(prompt, segments)| core::Trajectory {
            prompt: Cow::Borrowed(prompt.as_slice()),
            segments: segments
                .iter()
                .map(|s| core::Segment {
                    ids: Cow::Borrowed(s.ids.as_slice()),
                    generated: s.generated,
                    logprobs: s.logprobs.as_ref().map(|l| Cow::Borrowed(l.as_slice())),
                })
                .collect(),
        })
        .collect();
    let config = core::PackConfig {
        max_prompt_len,
        max_response_len,
        pad_id,
    };
    let (b, (p, r)) = (trajs.len(), config.columns(&trajs));
    let buffers = core::PackBuffers {
        input_ids: pool::take(b * (p + r)),
        attention_mask: pool::take(b * (p + r)),
        position_ids: pool::take(b * (p + r)),
        loss_mask: pool::take(b * r),
        old_logprobs: pool::take(b * r),
    };
    let packed = py.detach(|| core::pack_into(&trajs, &config, buffers))?;
    let l = packed.prompt_len + packed.response_len;
    let out = PyDict::new(py);
    out.set_item("input_ids", pool::array2(py, packed.input_ids, b, l)?)?;
    out.set_item("attention_mask", pool::array2(py, packed.attention_mask, b, l)?)?;
    out.set_item("position_ids", pool::array2(py, packed.position_ids, b, l)?)?;
    out.set_item("loss_mask", pool::array2(py, packed.loss_mask, b, r)?)?;
    out.set_item("old_logprobs", pool::array2(py, packed.old_logprobs, b, r)?)?;
    out.set_item("last_index", packed.last_index.into_pyarray(py))?;
    out.set_item("truncated", packed.truncated.into_pyarray(py))?;
    out.set_item("prompt_len", packed.prompt_len)?;
    out.set_item("response_len", packed.response_len)?;
    Ok(out)
}

/// Builds an index of `corpus` in `out`; returns the manifest as JSON text.
#[pyfunction]
#[pyo3(signature = (corpus, out, *, bm25 = true, k1 = 0.9, b = 0.4, stem = true, stopwords = true, threads = None, memory_mb = 512, skip_bad = false, progress = false))]
#[allow(clippy::too_many_arguments)]
fn build_index(
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
struct PyDenseWriter(Option<core::dense::DenseWriter>);

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
fn add_dense(dir: std::path::PathBuf, dim: usize, dtype: &str, rows: u64, encoder: &str) -> Result<String> {
    let encoder: serde_json::Value = serde_json::from_str(encoder)
        .map_err(|e| Error::Py(InputError::new_err(format!("encoder settings are not JSON: {e}"))))?;
    let settings = core::dense::DenseSettings {
        dim,
        dtype: core::dense::DType::parse(dtype)?,
        rows,
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
fn add_hnsw(
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
struct PyCorpusBatches {
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
struct PyIndex(core::IndexDir);

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

/// The Rust core of searchr1.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<PyAction>()?;
    m.add_class::<PyStopScanner>()?;
    m.add_class::<PyTokenStopChecker>()?;
    m.add_function(wrap_pyfunction!(parse_action, m)?)?;
    m.add_function(wrap_pyfunction!(pack_trajectories, m)?)?;
    m.add_function(wrap_pyfunction!(build_index, m)?)?;
    m.add_class::<PyIndex>()?;
    m.add_class::<PyDenseWriter>()?;
    m.add_class::<PyCorpusBatches>()?;
    m.add_function(wrap_pyfunction!(add_dense, m)?)?;
    m.add_function(wrap_pyfunction!(add_hnsw, m)?)?;
    Ok(())
}
