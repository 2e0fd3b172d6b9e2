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
//! This layer owns the manifest ([`crate::manifest`]): an [`IndexBuilder`] writes the
//! parts first and the manifest once, last, so a directory without one is an index
//! whose build did not finish, and opening it says so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::bm25::{Bm25Index, Bm25Settings, ScoredPassage};
use crate::corpus::CorpusReader;
use crate::dense::FlatIndex;
use crate::docstore::{DocStore, DocStoreWriter};
use crate::error::IndexError;
use crate::hnsw::{HnswIndex, HnswSettings};
use crate::manifest::{self, CorpusInfo, DenseInfo, Manifest};

const BM25_DIR: &str = "bm25";
/// Where dense vectors and their passages live inside an index directory.
pub const DENSE_DIR: &str = "dense";

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

/// Builds an index of `corpus` in `out` (absent or empty) with passages and BM25 only;
/// returns its manifest. See [`IndexBuilder`] to add dense vectors in the same build.
pub fn build(corpus: &Path, out: &Path, options: &BuildOptions) -> Result<Manifest, IndexError> {
    IndexBuilder::create(corpus, out, options)?.finish()
}

/// An index being built in a directory that was absent or empty: the passages (and
/// BM25) first, then, optionally, dense vectors and an HNSW graph over them;
/// [`IndexBuilder::finish`] writes the manifest, last.
///
/// A builder dropped unfinished (a step failed, or the caller gave up) removes what the
/// build wrote, so the same command can be rerun once the problem is fixed.
pub struct IndexBuilder {
    dir: PathBuf,
    manifest: Manifest,
    cleanup: Cleanup,
}

/// Removes what a build wrote into its directory, unless disarmed.
struct Cleanup {
    dir: PathBuf,
    /// The directory was there (empty) before the build: only its contents go.
    existed: bool,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.existed {
            for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                let path = entry.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl IndexBuilder {
    /// Starts an index of `corpus` in `out` (absent or empty): stores the passages and,
    /// when `options.bm25` is set, builds the BM25 index.
    pub fn create(corpus: &Path, out: &Path, options: &BuildOptions) -> Result<Self, IndexError> {
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
        let cleanup = Cleanup {
            dir: out.to_owned(),
            existed,
            armed: true,
        };
        let manifest = write_passages(corpus, out, options)?;
        Ok(IndexBuilder {
            dir: out.to_owned(),
            manifest,
            cleanup,
        })
    }

    /// The index directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The manifest [`IndexBuilder::finish`] will write, as it stands.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Records the dense vectors written into the `dense` directory (by a
    /// [`crate::dense::DenseWriter`]), after checking they open.
    pub fn add_dense(&mut self, dense: DenseInfo) -> Result<(), IndexError> {
        record_dense(&self.dir, &mut self.manifest, dense)
    }

    /// Builds an HNSW graph over the dense vectors on `threads` threads.
    pub fn add_hnsw(
        &mut self,
        settings: HnswSettings,
        threads: usize,
        progress: bool,
    ) -> Result<(), IndexError> {
        build_graph(&self.dir, &mut self.manifest, settings, threads, progress)
    }

    /// Writes the manifest, which completes the index; returns it.
    pub fn finish(self) -> Result<Manifest, IndexError> {
        let IndexBuilder {
            dir,
            manifest,
            mut cleanup,
        } = self;
        manifest::write(&dir, &manifest)?;
        cleanup.armed = false;
        Ok(manifest)
    }
}

/// Stores the passages of `corpus` in `out` (and indexes them for BM25 when set);
/// returns the manifest of an index of just those.
fn write_passages(corpus: &Path, out: &Path, options: &BuildOptions) -> Result<Manifest, IndexError> {
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
    let corpus = CorpusInfo {
        path: corpus.display().to_string(),
        crc32: sum.crc32,
        bytes: sum.bytes,
        passages,
        skipped_lines: reader.skipped(),
    };
    Ok(Manifest::new(corpus, options.bm25))
}

/// Checks the vectors in `dir/dense` against `manifest` and records them there.
fn record_dense(dir: &Path, manifest: &mut Manifest, dense: DenseInfo) -> Result<(), IndexError> {
    if dense.vectors.rows != manifest.corpus.passages {
        return Err(IndexError::Settings(format!(
            "{} vectors for a corpus of {} passages",
            dense.vectors.rows, manifest.corpus.passages
        )));
    }
    FlatIndex::open(&dir.join(DENSE_DIR), dense.vectors)?;
    manifest.dense = Some(dense);
    Ok(())
}

/// Builds an HNSW graph over the dense vectors of `dir` and records it in `manifest`.
fn build_graph(
    dir: &Path,
    manifest: &mut Manifest,
    settings: HnswSettings,
    threads: usize,
    progress: bool,
) -> Result<(), IndexError> {
    let Some(dense) = manifest.dense.as_mut() else {
        return Err(IndexError::Settings(format!(
            "{} has no dense vectors to build a graph over",
            dir.display()
        )));
    };
    let dense_dir = dir.join(DENSE_DIR);
    let flat = FlatIndex::open(&dense_dir, dense.vectors)?;
    let bar = progress_bar(progress, flat.rows() as u64, "graph", "{pos}/{len} vectors");
    HnswIndex::build(&dense_dir, &flat, settings, threads, |n| {
        bar.set_position(n as u64)
    })?;
    bar.finish_and_clear();
    dense.hnsw = Some(settings);
    Ok(())
}

/// Builds an HNSW graph over the dense vectors of the finished index `dir` (replacing
/// any graph it had) and records it.
pub fn add_hnsw(
    dir: &Path,
    settings: HnswSettings,
    threads: usize,
    progress: bool,
) -> Result<Manifest, IndexError> {
    let mut manifest = manifest::read(dir)?;
    build_graph(dir, &mut manifest, settings, threads, progress)?;
    manifest::write(dir, &manifest)?;
    Ok(manifest)
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
        let manifest = manifest::read(dir)?;
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
            Some(info) => Some(FlatIndex::open(&dir.join(DENSE_DIR), info.vectors)?),
            None => None,
        };
        let graph = manifest.dense.as_ref().and_then(|d| d.hnsw);
        let hnsw = match (graph, &dense) {
            (Some(graph), Some(flat)) => Some(HnswIndex::open(&dir.join(DENSE_DIR), graph, flat)?),
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
        let path = out.join(manifest::FILE);
        let body = std::fs::read_to_string(&path)
            .unwrap()
            .replace(&format!("\"version\": {}", manifest::VERSION), "\"version\": 99");
        std::fs::write(&path, body).unwrap();
        let err = IndexDir::open(&out).err().unwrap();
        assert!(err.to_string().contains("version 99"), "{err}");
        std::fs::remove_file(&path).unwrap();
        let err = IndexDir::open(&out).err().unwrap();
        assert!(err.to_string().contains("build did not finish"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_manifest_comes_last_and_an_unfinished_build_leaves_nothing() {
        let dir = tmp("builder");
        let corpus = dir.join("corpus.jsonl");
        std::fs::write(&corpus, "{\"id\": \"a\", \"contents\": \"x\"}\n").unwrap();
        let out = dir.join("index");
        let mut builder = IndexBuilder::create(&corpus, &out, &BuildOptions::default()).unwrap();
        assert!(out.join("passages.bin").is_file());
        assert!(!out.join(manifest::FILE).exists());
        assert_eq!(builder.manifest().corpus.passages, 1);
        let no_vectors = builder.add_hnsw(HnswSettings::default(), 1, false).unwrap_err();
        assert!(
            no_vectors.to_string().contains("no dense vectors"),
            "{no_vectors}"
        );
        drop(builder);
        assert!(
            !out.exists(),
            "a builder dropped unfinished removes its directory"
        );

        // A directory that was there (empty) stays, emptied.
        std::fs::create_dir(&out).unwrap();
        drop(IndexBuilder::create(&corpus, &out, &BuildOptions::default()).unwrap());
        assert!(out.is_dir() && std::fs::read_dir(&out).unwrap().next().is_none());

        let builder = IndexBuilder::create(&corpus, &out, &BuildOptions::default()).unwrap();
        let manifest = builder.finish().unwrap();
        assert_eq!(manifest::read(&out).unwrap(), manifest);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
