//! An index directory: a manifest plus one sub-index per retrieval method.
//!
//! ```text
//! INDEX/
//!   manifest.json   format and version, corpus checksum, settings of each method
//!   passages.bin    every passage (id, contents) by row, in corpus order
//!   passages.idx    their offsets
//!   bm25/           the tantivy index (documents carry their row)
//!   dense/          vectors by row, and an optional HNSW graph
//! ```
//!
//! The manifest is written last, atomically: a directory without one is an index whose
//! build did not finish, and opening it says so.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::bm25::{Bm25Index, Bm25Settings, ScoredPassage};
use crate::corpus::CorpusReader;
use crate::dense::{DenseSettings, FlatIndex};
use crate::docstore::{DocStore, DocStoreWriter};
use crate::error::IndexError;
use crate::hnsw::{HnswIndex, HnswSettings};

/// The `format` field of every manifest.
pub const FORMAT: &str = "searchr1-index";
/// The manifest version this build writes and reads.
pub const VERSION: u32 = 2;
const MANIFEST: &str = "manifest.json";
const BM25_DIR: &str = "bm25";
/// Where dense vectors and their passages live inside an index directory.
pub const DENSE_DIR: &str = "dense";

/// Where the passages came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusInfo {
    pub path: String,
    pub crc32: u32,
    pub bytes: u64,
    pub passages: u64,
    pub skipped_lines: u64,
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
    pub dense: Option<DenseSettings>,
}

/// How to build an index.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// BM25 settings; `None` builds no BM25 index (the corpus is still read through,
    /// counted and checksummed: dense vectors are added afterwards from Python).
    pub bm25: Option<Bm25Settings>,
    /// Indexing threads.
    pub threads: usize,
    /// Memory for the indexing threads, in bytes.
    pub memory_budget: usize,
    /// Skip (and count) malformed corpus lines instead of stopping.
    pub skip_bad: bool,
    /// Draw a progress bar on standard error.
    pub progress: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            bm25: Some(Bm25Settings::default()),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_budget: 512 << 20,
            skip_bad: false,
            progress: false,
        }
    }
}

fn progress_bar(enabled: bool, total: u64, prefix: &'static str, counts: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(4));
    let template = format!("{{prefix}} [{{elapsed_precise}}] {{wide_bar}} {counts} {{msg}} (eta {{eta}})");
    bar.set_style(ProgressStyle::with_template(&template).expect("valid template"));
    bar.set_prefix(prefix);
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Builds an index of `corpus` in `out` (absent or empty); returns its manifest.
///
/// When the build fails, what it wrote is removed again, so the same command can be
/// rerun once the problem is fixed.
pub fn build(corpus: &Path, out: &Path, options: &BuildOptions) -> Result<Manifest, IndexError> {
    let existed = out.exists();
    if existed {
        let mut entries = std::fs::read_dir(out).map_err(|e| IndexError::io(out, e))?;
        if entries.next().is_some() {
            return Err(IndexError::Settings(format!(
                "{} is not empty; refusing to overwrite it (remove it or pick another --out)",
                out.display()
            )));
        }
    }
    let result = build_into(corpus, out, options);
    if result.is_err() {
        // `out` was absent or empty: everything in it is this build's.
        if existed {
            for entry in std::fs::read_dir(out).into_iter().flatten().flatten() {
                let path = entry.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        } else {
            let _ = std::fs::remove_dir_all(out);
        }
    }
    result
}

fn build_into(corpus: &Path, out: &Path, options: &BuildOptions) -> Result<Manifest, IndexError> {
    if let Some(bm25) = &options.bm25 {
        bm25.validate()?;
    }
    let total = std::fs::metadata(corpus)
        .map_err(|e| IndexError::io(corpus, e))?
        .len();
    let mut reader = CorpusReader::open(corpus, options.skip_bad)?;
    let bar = progress_bar(options.progress, total, "indexing", "{bytes}/{total_bytes}");
    let started = std::time::Instant::now();
    let checksum = reader.checksum_handle();
    let on_passage = |n: u64| {
        if n.is_multiple_of(4096) {
            bar.set_position(checksum.bytes());
            let rate = n as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("{n} passages, {rate:.0}/s"));
        }
    };
    std::fs::create_dir_all(out).map_err(|e| IndexError::io(out, e))?;
    let mut store = DocStoreWriter::create(out)?;
    let mut stored = reader.by_ref().map(|p| {
        let p = p?;
        store.add(&p.id, &p.contents)?;
        Ok::<_, IndexError>(p)
    });
    let passages = match options.bm25 {
        Some(bm25) => {
            Bm25Index::build(
                &out.join(BM25_DIR),
                &mut stored,
                bm25,
                options.threads,
                options.memory_budget,
                on_passage,
            )?
            .passages
        }
        None => {
            let mut n = 0u64;
            for passage in &mut stored {
                passage?;
                n += 1;
                on_passage(n);
            }
            n
        }
    };
    drop(stored);
    store.finish()?;
    bar.finish_and_clear();
    let sum = reader.checksum();
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        created_by: format!("searchr1 {}", env!("CARGO_PKG_VERSION")),
        corpus: CorpusInfo {
            path: corpus.display().to_string(),
            crc32: sum.crc32,
            bytes: sum.bytes,
            passages,
            skipped_lines: reader.skipped(),
        },
        bm25: options.bm25,
        dense: None,
    };
    write_manifest(out, &manifest)?;
    Ok(manifest)
}

/// Records the dense vectors written in `dir/dense` in the manifest of the index `dir`.
pub fn add_dense(dir: &Path, dense: DenseSettings) -> Result<Manifest, IndexError> {
    let mut manifest = read_manifest(dir)?;
    if dense.rows != manifest.corpus.passages {
        return Err(IndexError::Settings(format!(
            "{} vectors for a corpus of {} passages",
            dense.rows, manifest.corpus.passages
        )));
    }
    FlatIndex::open(&dir.join(DENSE_DIR), dense.clone())?;
    manifest.dense = Some(dense);
    write_manifest(dir, &manifest)?;
    Ok(manifest)
}

/// Builds an HNSW graph over the dense vectors of the index `dir` and records it.
pub fn add_hnsw(
    dir: &Path,
    settings: HnswSettings,
    threads: usize,
    progress: bool,
) -> Result<Manifest, IndexError> {
    let mut manifest = read_manifest(dir)?;
    let Some(dense) = manifest.dense.as_mut() else {
        return Err(IndexError::Settings(format!(
            "{} has no dense vectors to build a graph over",
            dir.display()
        )));
    };
    let dense_dir = dir.join(DENSE_DIR);
    let flat = FlatIndex::open(&dense_dir, dense.clone())?;
    let bar = progress_bar(progress, flat.rows() as u64, "graph", "{pos}/{len} vectors");
    HnswIndex::build(&dense_dir, &flat, settings, threads, |n| {
        bar.set_position(n as u64)
    })?;
    bar.finish_and_clear();
    dense.hnsw = Some(settings);
    write_manifest(dir, &manifest)?;
    Ok(manifest)
}

fn write_manifest(out: &Path, manifest: &Manifest) -> Result<(), IndexError> {
    let tmp = out.join(format!("{MANIFEST}.tmp"));
    let body = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
    let mut file = std::fs::File::create(&tmp).map_err(|e| IndexError::io(&tmp, e))?;
    file.write_all(&body).map_err(|e| IndexError::io(&tmp, e))?;
    file.sync_all().map_err(|e| IndexError::io(&tmp, e))?;
    std::fs::rename(&tmp, out.join(MANIFEST)).map_err(|e| IndexError::io(out, e))
}

/// Reads and checks the manifest of the index in `dir`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, IndexError> {
    let path = dir.join(MANIFEST);
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
                "{} has no {MANIFEST}: not a searchr1 index, or its build did not finish",
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

/// An opened index directory.
pub struct IndexDir {
    path: PathBuf,
    manifest: Manifest,
    store: DocStore,
    bm25: Option<Bm25Index>,
    dense: Option<FlatIndex>,
    hnsw: Option<HnswIndex>,
}

impl IndexDir {
    /// Opens the index in `dir`, checking its manifest.
    pub fn open(dir: &Path) -> Result<Self, IndexError> {
        let manifest = read_manifest(dir)?;
        let store = DocStore::open(dir)?;
        if store.len() as u64 != manifest.corpus.passages {
            return Err(IndexError::Corrupt(format!(
                "{}: the manifest counts {} passages but the passage store holds {}",
                dir.display(),
                manifest.corpus.passages,
                store.len()
            )));
        }
        let bm25 = match manifest.bm25 {
            Some(settings) => Some(
                Bm25Index::open(&dir.join(BM25_DIR), settings).map_err(|e| match e {
                    IndexError::Tantivy(msg) => IndexError::Corrupt(format!(
                        "{}: the BM25 index cannot be opened: {msg}",
                        dir.display()
                    )),
                    other => other,
                })?,
            ),
            None => None,
        };
        if let Some(index) = &bm25 {
            if index.len() != manifest.corpus.passages {
                return Err(IndexError::Corrupt(format!(
                    "{}: the manifest counts {} passages but the BM25 index holds {}",
                    dir.display(),
                    manifest.corpus.passages,
                    index.len()
                )));
            }
        }
        let dense = match &manifest.dense {
            Some(settings) => Some(FlatIndex::open(&dir.join(DENSE_DIR), settings.clone())?),
            None => None,
        };
        let hnsw = match (&manifest.dense, &dense) {
            (
                Some(DenseSettings {
                    hnsw: Some(graph), ..
                }),
                Some(flat),
            ) => Some(HnswIndex::open(&dir.join(DENSE_DIR), *graph, flat)?),
            _ => None,
        };
        Ok(IndexDir {
            path: dir.to_owned(),
            manifest,
            store,
            bm25,
            dense,
            hnsw,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The BM25 index, or an error saying this index has none.
    pub fn bm25(&self) -> Result<&Bm25Index, IndexError> {
        self.bm25.as_ref().ok_or_else(|| {
            IndexError::Settings(format!(
                "{} has no BM25 index; rebuild it with BM25",
                self.path.display()
            ))
        })
    }

    /// The dense index, or an error saying this index has none.
    pub fn dense(&self) -> Result<&FlatIndex, IndexError> {
        self.dense.as_ref().ok_or_else(|| {
            IndexError::Settings(format!(
                "{} has no dense vectors; build it with a dense model",
                self.path.display()
            ))
        })
    }

    /// Sets the HNSW search breadth (efSearch) for later searches; `false` without a graph.
    pub fn set_ef_search(&self, n: usize) -> bool {
        self.hnsw.as_ref().map(|g| g.set_expansion_search(n)).is_some()
    }

    /// Whether an HNSW graph is there for approximate dense search.
    pub fn has_hnsw(&self) -> bool {
        self.hnsw.is_some()
    }

    /// Inner-product search with query vectors (`n × dim`, row-major): through the
    /// HNSW graph when there is one, unless `exact`; else over every vector.
    pub fn search_dense(
        &self,
        queries: &[f32],
        k: usize,
        exact: bool,
    ) -> Result<Vec<Vec<ScoredPassage>>, IndexError> {
        let dense = self.dense()?;
        let rows = match &self.hnsw {
            Some(graph) if !exact => graph.search(queries, dense.dim(), k, dense)?,
            _ => dense.search(queries, k)?,
        };
        self.resolve(rows)
    }

    /// Rows with scores, resolved to their passages.
    fn resolve(&self, rows: Vec<Vec<(usize, f32)>>) -> Result<Vec<Vec<ScoredPassage>>, IndexError> {
        rows.into_iter()
            .map(|hits| {
                hits.into_iter()
                    .map(|(row, score)| {
                        let (id, contents) = self.store.get(row)?;
                        Ok(ScoredPassage { id, score, contents })
                    })
                    .collect()
            })
            .collect()
    }

    /// BM25 search; see [`Bm25Index::search`].
    pub fn search_bm25(&self, queries: &[String], k: usize) -> Result<Vec<Vec<ScoredPassage>>, IndexError> {
        let rows = self.bm25()?.search(queries, k)?;
        self.resolve(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("searchr1-index-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn build_open_and_refuse() {
        let dir = tmp("build");
        let corpus = dir.join("corpus.jsonl");
        std::fs::write(
            &corpus,
            "{\"id\": \"a\", \"contents\": \"\\\"Paris\\\"\\nParis is the capital of France.\"}\n\
             {\"id\": \"b\", \"contents\": \"\\\"Rome\\\"\\nRome is the capital of Italy.\"}\n",
        )
        .unwrap();
        let out = dir.join("index");
        let manifest = build(&corpus, &out, &BuildOptions::default()).unwrap();
        assert_eq!(manifest.corpus.passages, 2);
        let index = IndexDir::open(&out).unwrap();
        let hits = index.search_bm25(&["capital of italy".into()], 1).unwrap();
        assert_eq!(hits[0][0].id, "b");

        let again = build(&corpus, &out, &BuildOptions::default()).unwrap_err();
        assert!(again.to_string().contains("refusing to overwrite"), "{again}");

        // A manifest from the future, and none at all.
        let path = out.join(MANIFEST);
        let body = std::fs::read_to_string(&path)
            .unwrap()
            .replace(&format!("\"version\": {VERSION}"), "\"version\": 99");
        std::fs::write(&path, body).unwrap();
        let err = IndexDir::open(&out).err().unwrap();
        assert!(err.to_string().contains("version 99"), "{err}");
        std::fs::remove_file(&path).unwrap();
        let err = IndexDir::open(&out).err().unwrap();
        assert!(err.to_string().contains("build did not finish"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
