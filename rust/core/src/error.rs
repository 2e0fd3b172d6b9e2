//! The errors of each core module; the Python binding maps them onto exceptions.

use std::path::PathBuf;

use thiserror::Error;

/// Errors of tag scanning and stop checking.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TagError {
    #[error("stop string {index} is empty; every stop string needs at least one character")]
    EmptyStop { index: usize },
    #[error("the stop strings are {bytes} bytes long in all; at most 65534 are supported")]
    StopsTooLong { bytes: usize },
    #[error("the vocabulary is {bytes} bytes long in all; at most 4 GiB is supported")]
    VocabTooLarge { bytes: usize },
    #[error("{what} has {got} entries but {expected} were expected")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("row {row} is out of range: the checker tracks {batch_size} sequences (call reset first)")]
    RowOutOfRange { row: usize, batch_size: usize },
    #[error("token id {id} at position {position} is negative")]
    NegativeTokenId { position: usize, id: i64 },
}

/// Errors of packing rollouts into batch arrays.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PackError {
    #[error("trajectory {trajectory}: the prompt has {len} tokens, more than max_prompt_len = {max}")]
    PromptTooLong {
        trajectory: usize,
        len: usize,
        max: usize,
    },
    #[error("trajectory {trajectory}, segment {segment}: {ids} token ids but {logprobs} log-probs")]
    LogprobLength {
        trajectory: usize,
        segment: usize,
        ids: usize,
        logprobs: usize,
    },
    #[error("trajectory {trajectory}, {place}: token id {id} at position {position} is negative")]
    NegativeTokenId {
        trajectory: usize,
        place: String,
        position: usize,
        id: i64,
    },
}

/// Errors of reading a corpus.
#[derive(Debug, Error)]
pub enum CorpusError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}: {reason}", path.display())]
    BadLine {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error("{}:{line}: duplicate id {id:?} (an earlier line has the same id)", path.display())]
    DuplicateId { path: PathBuf, line: u64, id: String },
    #[error("{}: no passages: {}", path.display(), empty_reason(*.skipped))]
    Empty { path: PathBuf, skipped: u64 },
}

fn empty_reason(skipped: u64) -> String {
    if skipped == 0 {
        "the file is empty or holds only blank lines".into()
    } else {
        format!("all {skipped} of its lines were malformed and skipped; an index needs at least one passage")
    }
}

/// Errors of building, opening or searching an index.
#[derive(Debug, Error)]
pub enum IndexError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Settings(String),
    #[error("the index is corrupt or not a searchr1 index: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Mismatch(String),
    #[error("tantivy: {0}")]
    Tantivy(String),
    /// usearch (the HNSW graph) failed to build, write or search.
    #[error("usearch: {0}")]
    Usearch(String),
    /// The directory holds a build that did not finish (it was killed or failed).
    #[error("{0}")]
    Incomplete(String),
    /// The caller asked the build to stop (Ctrl-C); what it wrote is removed.
    #[error("the build was interrupted; what it wrote was removed")]
    Cancelled,
    #[error(transparent)]
    Corpus(#[from] CorpusError),
}

impl IndexError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        IndexError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
