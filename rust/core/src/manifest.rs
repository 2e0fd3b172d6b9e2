//! `manifest.json`: what an index directory holds and how each part was built.
//!
//! The index layer ([`crate::index`]) is its one writer, and writes it last and
//! atomically: a directory without one is an index whose build did not finish. Each
//! retrieval method records its own settings type here (BM25's, the dense vectors',
//! the HNSW graph's); none of them reads or writes the file.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::bm25::Bm25Settings;
use crate::dense::DenseSettings;
use crate::error::IndexError;
use crate::hnsw::HnswSettings;

/// The `format` field of every manifest.
pub const FORMAT: &str = "searchr1-index";
/// The manifest version this build writes and reads.
pub const VERSION: u32 = 2;
/// The manifest's file name inside an index directory.
pub const FILE: &str = "manifest.json";

/// Where the passages came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusInfo {
    pub path: String,
    pub crc32: u32,
    pub bytes: u64,
    pub passages: u64,
    pub skipped_lines: u64,
}

/// The dense part of a manifest: the stored vectors, the encoder that made them
/// (whatever the Python encoder records) and the HNSW graph over them, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseInfo {
    /// `dim`, `dtype` and `rows`, at the top level of the record as always.
    #[serde(flatten)]
    pub vectors: DenseSettings,
    pub encoder: serde_json::Value,
    #[serde(default)]
    pub hnsw: Option<HnswSettings>,
}

/// The contents of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub created_by: String,
    pub corpus: CorpusInfo,
    pub bm25: Option<Bm25Settings>,
    #[serde(default)]
    pub dense: Option<DenseInfo>,
}

impl Manifest {
    /// The manifest of an index of `corpus` with only its passages (and BM25, if set).
    pub fn new(corpus: CorpusInfo, bm25: Option<Bm25Settings>) -> Self {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            created_by: format!("searchr1 {}", env!("CARGO_PKG_VERSION")),
            corpus,
            bm25,
            dense: None,
        }
    }
}

/// Writes `manifest` into `dir` atomically (a temporary file renamed over the old one).
pub(crate) fn write(dir: &Path, manifest: &Manifest) -> Result<(), IndexError> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let body = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
    let mut file = std::fs::File::create(&tmp).map_err(|e| IndexError::io(&tmp, e))?;
    file.write_all(&body).map_err(|e| IndexError::io(&tmp, e))?;
    file.sync_all().map_err(|e| IndexError::io(&tmp, e))?;
    std::fs::rename(&tmp, dir.join(FILE)).map_err(|e| IndexError::io(dir, e))
}

/// Reads and checks the manifest of the index in `dir`.
pub fn read(dir: &Path) -> Result<Manifest, IndexError> {
    let path = dir.join(FILE);
    if !dir.is_dir() {
        return Err(IndexError::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such index directory"),
        ));
    }
    let body = match std::fs::read(&path) {
        Ok(body) => body,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(IndexError::Corrupt(format!(
                "{} has no {FILE}: not a searchr1 index, or its build did not finish",
                dir.display()
            )))
        }
        Err(e) => return Err(IndexError::io(&path, e)),
    };
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| IndexError::Corrupt(format!("{}: not valid JSON: {e}", path.display())))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(IndexError::Corrupt(format!(
            "{}: \"format\" is not {FORMAT:?}",
            path.display()
        )));
    }
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == VERSION as u64 => {}
        Some(v) => {
            return Err(IndexError::Mismatch(format!(
                "{}: index format version {v}, but this searchr1 reads version {VERSION}; rebuild the index",
                path.display()
            )))
        }
        None => return Err(IndexError::Corrupt(format!("{}: no \"version\"", path.display()))),
    }
    serde_json::from_value(value).map_err(|e| IndexError::Corrupt(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest as version 2 has always written it, dense vectors and graph included.
    const WRITTEN: &str = r#"{
  "format": "searchr1-index",
  "version": 2,
  "created_by": "searchr1 0.1.0",
  "corpus": {
    "path": "corpus.jsonl",
    "crc32": 3735928559,
    "bytes": 1234,
    "passages": 12,
    "skipped_lines": 0
  },
  "bm25": {
    "k1": 0.9,
    "b": 0.4,
    "stem": true,
    "stopwords": true
  },
  "dense": {
    "dim": 384,
    "dtype": "f16",
    "rows": 12,
    "encoder": {
      "model": "all-MiniLM-L6-v2",
      "pooling": "mean"
    },
    "hnsw": {
      "dtype": "i8",
      "connectivity": 16,
      "expansion_add": 128,
      "expansion_search": 256
    }
  }
}"#;

    #[test]
    fn existing_manifests_read_and_write_back_unchanged() {
        let dir = std::env::temp_dir().join(format!("searchr1-manifest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE), WRITTEN).unwrap();
        let manifest = read(&dir).unwrap();
        let dense = manifest.dense.as_ref().unwrap();
        assert_eq!(dense.vectors.dim, 384);
        assert_eq!(dense.hnsw.unwrap().connectivity, 16);
        write(&dir, &manifest).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(FILE)).unwrap(), WRITTEN);

        // Older version-2 manifests have no "dense", or dense without "hnsw".
        let mut value: serde_json::Value = serde_json::from_str(WRITTEN).unwrap();
        value["dense"].as_object_mut().unwrap().remove("hnsw");
        let no_graph: Manifest = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(no_graph.dense.unwrap().hnsw, None);
        value.as_object_mut().unwrap().remove("dense");
        assert_eq!(serde_json::from_value::<Manifest>(value).unwrap().dense, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
