//! Tag scanning and token-level stop checking: `Action`, `parse_action`,
//! `StopScanner`, `TokenStopChecker`.

use numpy::{IntoPyArray, PyArray1};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use searchr1_core as core;

use crate::arrays::Values;
use crate::errors::{Error, InputError, Result};

/// The action of one turn, as Search-R1 parses it.
#[pyclass(frozen, eq, module = "searchr1._core", name = "Action")]
#[derive(PartialEq)]
pub(crate) struct PyAction {
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
pub(crate) fn parse_action(py: Python<'_>, text: &str) -> PyAction {
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
pub(crate) struct PyStopScanner(core::StopScanner);

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
pub(crate) struct PyTokenStopChecker(core::TokenStopChecker);

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
