//! `manifest.json`: what an index directory holds and how each part was built.
//!
//! The index layer ([`crate::index`]) is its one writer. It writes it atomically after
//! each stage of a build (the passages and BM25, the dense vectors, the HNSW graph)
//! with `"complete": false`, and once more with `"complete": true` at the end: the
//! manifest is the commit point, and an index whose manifest is missing or incomplete
//! was interrupted and does not open. `"files"` records the size and checksums of every
//! file the stages wrote ([`crate::checksum`]). Each retrieval method records its own
//! settings type here (BM25's, the dense vectors', the HNSW graph's); none of them
//! reads or writes the file.
//!
//! Versions: 3 added `complete` and `files`. A version-2 manifest was only ever
//! written at the end of a build, so it reads as complete, with no checksums.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::bm25::Bm25Settings;
use crate::checksum::FileSum;
use crate::dense::DenseSettings;
use crate::error::IndexError;
use crate::graph::HnswSettings;

/// The `format` field of every manifest.
pub const FORMAT: &str = "searchr1-index";
/// The manifest version this build writes.
pub const VERSION: u32 = 3;
/// The oldest manifest version this build reads.
pub const OLDEST_READ: u32 = 2;
/// The manifest's file name inside an index directory.
pub const FILE: &str = "manifest.json";
/// The file a build writes first into its directory, so that `--overwrite` can tell a
/// leftover of ours (killed before any manifest) from a directory it must not touch.
pub const MARKER: &str = ".searchr1-index";

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
    /// Whether the build finished; an incomplete index does not open.
    pub complete: bool,
    pub corpus: CorpusInfo,
    pub bm25: Option<Bm25Settings>,
    #[serde(default)]
    pub dense: Option<DenseInfo>,
    /// Every file the build wrote, by path relative to the index (`/`-separated).
    pub files: BTreeMap<String, FileSum>,
}

impl Manifest {
    /// The (incomplete) manifest of an index of `corpus` with only its passages (and
    /// BM25, if set).
    pub fn new(corpus: CorpusInfo, bm25: Option<Bm25Settings>) -> Self {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            created_by: format!("searchr1 {}", env!("CARGO_PKG_VERSION")),
            complete: false,
            corpus,
            bm25,
            dense: None,
            files: BTreeMap::new(),
        }
    }

    /// The stages whose parts the manifest records, for messages.
    pub fn stages(&self) -> String {
        let mut stages = vec!["passages"];
        if self.bm25.is_some() {
            stages.push("BM25");
        }
        if let Some(dense) = &self.dense {
            stages.push("dense vectors");
            if dense.hnsw.is_some() {
                stages.push("HNSW graph");
            }
        }
        stages.join(", ")
    }
}

/// Writes `manifest` into `dir` atomically (a temporary file renamed over the old one).
pub(crate) fn write(dir: &Path, manifest: &Manifest) -> Result<(), IndexError> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let body = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
    let mut file = std::fs::File::create(&tmp).map_err(|e| IndexError::io(&tmp, e))?;
    file.write_all(&body).map_err(|e| IndexError::io(&tmp, e))?;
    file.sync_all().map_err(|e| IndexError::io(&tmp, e))?;
    std::fs::rename(&tmp, dir.join(FILE)).map_err(|e| IndexError::io(dir, e))?;
    // The rename is the commit: make it durable before the next stage starts writing.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads and checks the manifest of the index in `dir`, complete or not.
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
            if dir.join(MARKER).is_file() {
                return Err(IndexError::Incomplete(format!(
                    "{} holds a searchr1 index build that was interrupted before it wrote \
                     its {FILE}; rebuild it with `searchr1 index --overwrite`",
                    dir.display()
                )));
            }
            return Err(IndexError::Corrupt(format!(
                "{} has no {FILE}: not a searchr1 index, or its build did not finish",
                dir.display()
            )));
        }
        Err(e) => return Err(IndexError::io(&path, e)),
    };
    let mut value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| IndexError::Corrupt(format!("{}: not valid JSON: {e}", path.display())))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(IndexError::Corrupt(format!(
            "{}: \"format\" is not {FORMAT:?}",
            path.display()
        )));
    }
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == VERSION as u64 => {}
        Some(2) => {
            // Written once, at the end of a build, with no checksums; read as a
            // version-3 manifest from then on.
            value["version"] = VERSION.into();
            value["complete"] = true.into();
            value["files"] = serde_json::json!({});
        }
        Some(v) => {
            return Err(IndexError::Mismatch(format!(
                "{}: index format version {v}, but this searchr1 reads versions {OLDEST_READ} to \
                 {VERSION}; rebuild the index",
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

    /// A manifest as version 3 writes it, dense vectors and graph included.
    const WRITTEN: &str = r#"{
  "format": "searchr1-index",
  "version": 3,
  "created_by": "searchr1 0.1.0",
  "complete": true,
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
      "model": "/models/all-MiniLM-L6-v2",
      "pooling": "mean"
    },
    "hnsw": {
      "dtype": "i8",
      "connectivity": 24,
      "expansion_add": 128,
      "expansion_search": 64,
      "format": 2
    }
  },
  "files": {
    "dense/vectors.bin": {
      "bytes": 9216,
      "crc32": 1,
      "ends_crc32": 2
    },
    "passages.bin": {
      "bytes": 3000,
      "crc32": 3,
      "ends_crc32": 4
    }
  }
}"#;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("searchr1-manifest-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn manifests_read_and_write_back_unchanged() {
        let dir = temp("v3");
        std::fs::write(dir.join(FILE), WRITTEN).unwrap();
        let manifest = read(&dir).unwrap();
        let dense = manifest.dense.as_ref().unwrap();
        assert_eq!(dense.vectors.dim, 384);
        assert_eq!(dense.hnsw.unwrap().connectivity, 24);
        assert!(manifest.complete);
        assert_eq!(manifest.files["passages.bin"].bytes, 3000);
        assert_eq!(manifest.stages(), "passages, BM25, dense vectors, HNSW graph");
        write(&dir, &manifest).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(FILE)).unwrap(), WRITTEN);

        // Manifests without "dense", or dense without "hnsw".
        let mut value: serde_json::Value = serde_json::from_str(WRITTEN).unwrap();
        value["dense"].as_object_mut().unwrap().remove("hnsw");
        let no_graph: Manifest = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(no_graph.dense.unwrap().hnsw, None);
        value.as_object_mut().unwrap().remove("dense");
        assert_eq!(serde_json::from_value::<Manifest>(value).unwrap().dense, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn version_2_reads_as_complete_without_checksums() {
        let dir = temp("v2");
        let mut value: serde_json::Value = serde_json::from_str(WRITTEN).unwrap();
        let fields = value.as_object_mut().unwrap();
        fields.remove("complete");
        fields.remove("files");
        fields.insert("version".into(), 2.into());
        value["dense"]["hnsw"].as_object_mut().unwrap().remove("format");
        std::fs::write(dir.join(FILE), serde_json::to_vec(&value).unwrap()).unwrap();
        let old = read(&dir).unwrap();
        assert!(old.complete && old.files.is_empty());
        assert_eq!(old.version, VERSION, "written back as the current version");
        let graph = old.dense.unwrap().hnsw.unwrap();
        assert_eq!(graph.connectivity, 24);
        assert_eq!(
            graph.format, 1,
            "a graph whose format is not named is searchr1's own"
        );

        for (version, message) in [(1, "version 1, but"), (4, "version 4, but")] {
            value["version"] = version.into();
            std::fs::write(dir.join(FILE), serde_json::to_vec(&value).unwrap()).unwrap();
            let err = read(&dir).unwrap_err().to_string();
            assert!(err.contains(message) && err.contains("rebuild"), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
