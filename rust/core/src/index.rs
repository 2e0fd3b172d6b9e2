//! An index directory: a manifest plus one sub-index per retrieval method.
//!
//! ```text
//! INDEX/
//!   .searchr1-index written first: this directory is (being) built by searchr1
//!   manifest.json   format and version, whether the build is complete, corpus
//!                   checksum, settings of each method, size and checksums of each file
//!   passages.bin    every passage (id, contents) by row, in corpus order
//!   passages.idx    their offsets
//!   bm25/           the tantivy index (documents carry their row)
//!   dense/          vectors by row, and an optional HNSW graph
//! ```
//!
//! This layer owns the manifest ([`crate::manifest`]). An [`IndexBuilder`] writes the
//! marker first, then after each stage (the passages and BM25, the dense vectors, the
//! graph) the manifest with that stage's files and checksums, marked incomplete until
//! [`IndexBuilder::finish`]: a build killed at any point leaves no manifest or an
//! incomplete one, and opening it says the build was interrupted. `overwrite` replaces
//! such a leftover, or a finished index, and never a directory that is not ours.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::bm25::{Bm25Index, Bm25Settings, ScoredPassage};
use crate::cancel::{self, Cancel};
use crate::checksum::FileSum;
use crate::corpus::CorpusReader;
use crate::dense::{self, FlatIndex};
use crate::docstore::{self, DocStore, DocStoreWriter};
use crate::error::{CorpusError, IndexError};
use crate::graph::{self, HnswIndex, HnswSettings};
use crate::manifest::{self, CorpusInfo, DenseInfo, Manifest, FILE, MARKER};

const BM25_DIR: &str = "bm25";
/// Where dense vectors and their passages live inside an index directory.
pub const DENSE_DIR: &str = "dense";
/// What the marker file says to whoever finds it.
const MARKER_TEXT: &str = "This directory is a searchr1 index, or a build of one (see manifest.json).\n\
    `searchr1 index --overwrite` may replace it.\n";
/// Every name a build writes at the top of its directory: a directory holding only
/// these, `passages.bin` among them, is a leftover of a build from before the marker.
const BUILD_NAMES: &[&str] = &[
    MARKER,
    FILE,
    "manifest.json.tmp",
    docstore::DATA,
    docstore::OFFSETS,
    BM25_DIR,
    DENSE_DIR,
];
/// Passages read between two questions to the build's [`Cancel`].
const CANCEL_EVERY: u64 = 1024;

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
    /// Replace what the output directory holds when it is a searchr1 index or the
    /// leftover of an interrupted build (never any other directory).
    pub overwrite: bool,
    /// Asked between pieces of every stage whether to stop (and remove the build).
    pub cancel: Cancel,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            bm25: Some(Bm25Settings::default()),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_budget: 512 << 20,
            skip_bad: false,
            progress: false,
            overwrite: false,
            cancel: Cancel::default(),
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

/// Builds an index of `corpus` in `out` with passages and BM25 only; returns its
/// manifest. See [`IndexBuilder`] to add dense vectors in the same build.
pub fn build(corpus: &Path, out: &Path, options: &BuildOptions) -> Result<Manifest, IndexError> {
    IndexBuilder::create(corpus, out, options)?.finish()
}

/// An index being built: the passages (and BM25) first, then, optionally, dense
/// vectors and an HNSW graph over them, each stage committed by an incomplete
/// manifest; [`IndexBuilder::finish`] marks it complete.
///
/// A builder dropped unfinished (a step failed, was cancelled, or the caller gave up)
/// removes what the build wrote, so the same command can be rerun once the problem is
/// fixed.
pub struct IndexBuilder {
    dir: PathBuf,
    manifest: Manifest,
    cancel: Cancel,
    cleanup: Cleanup,
}

/// Removes what a build wrote into its directory, unless disarmed.
struct Cleanup {
    dir: PathBuf,
    /// The directory was there before the build: only its contents go.
    existed: bool,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.existed {
            // The manifest first: a cleanup cut short leaves no index that looks whole.
            let _ = std::fs::remove_file(self.dir.join(FILE));
            let _ = clear(&self.dir, false);
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes the entries of `dir` (symbolic links as links), the marker too unless
/// `keep_marker`.
fn clear(dir: &Path, keep_marker: bool) -> Result<(), IndexError> {
    for entry in std::fs::read_dir(dir).map_err(|e| IndexError::io(dir, e))? {
        let entry = entry.map_err(|e| IndexError::io(dir, e))?;
        if keep_marker && entry.file_name() == MARKER {
            continue;
        }
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let removed = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| IndexError::io(&path, e))?;
    }
    Ok(())
}

/// Whether `dir` (holding `names`) was made by a searchr1 build: it has the marker, a
/// searchr1 manifest, or only what a build from before the marker wrote.
fn is_ours(dir: &Path, names: &[OsString]) -> bool {
    let manifest_format = || {
        let body = std::fs::read(dir.join(FILE)).ok()?;
        let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
        Some(value.get("format")?.as_str()? == manifest::FORMAT)
    };
    dir.join(MARKER).is_file()
        || manifest_format() == Some(true)
        || (names.iter().any(|n| n == docstore::DATA)
            && names
                .iter()
                .all(|n| n.to_str().is_some_and(|n| BUILD_NAMES.contains(&n))))
}

/// Makes `out` ready for a build: absent, empty, or, with `overwrite`, a searchr1
/// index or leftover, emptied (its manifest first, its marker kept). Returns whether
/// the directory was there.
fn prepare(out: &Path, overwrite: bool) -> Result<bool, IndexError> {
    let meta = match std::fs::metadata(out) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(IndexError::io(out, e)),
    };
    if !meta.is_dir() {
        return Err(IndexError::Settings(format!(
            "{} exists and is not a directory; pick another output directory",
            out.display()
        )));
    }
    let names: Vec<OsString> = std::fs::read_dir(out)
        .map_err(|e| IndexError::io(out, e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| IndexError::io(out, e))?;
    if names.is_empty() {
        return Ok(true);
    }
    if !is_ours(out, &names) {
        return Err(IndexError::Settings(format!(
            "{} is not empty and is not a searchr1 index (it has neither {MARKER} nor {FILE}); \
             refusing to overwrite it, even with --overwrite: remove it yourself or pick another \
             output directory",
            out.display()
        )));
    }
    if !overwrite {
        let what = match manifest::read(out) {
            Ok(m) if m.complete => "a searchr1 index",
            _ => "an unfinished searchr1 index build (it was interrupted)",
        };
        return Err(IndexError::Settings(format!(
            "{} holds {what}; refusing to overwrite it unless asked to \
             (--overwrite, or overwrite=True in Python)",
            out.display()
        )));
    }
    let _ = std::fs::remove_file(out.join(FILE));
    clear(out, true)?;
    Ok(true)
}

impl IndexBuilder {
    /// Starts an index of `corpus` in `out` (absent, empty, or to be replaced with
    /// `options.overwrite`): writes the marker, stores the passages and, when
    /// `options.bm25` is set, builds the BM25 index; then the first, incomplete,
    /// manifest.
    pub fn create(corpus: &Path, out: &Path, options: &BuildOptions) -> Result<Self, IndexError> {
        // What can fail before the build starts fails before an index is overwritten.
        if let Some(bm25) = &options.bm25 {
            bm25.validate()?;
        }
        CorpusReader::open(corpus, options.skip_bad)?;
        let existed = prepare(out, options.overwrite)?;
        let cleanup = Cleanup {
            dir: out.to_owned(),
            existed,
            armed: true,
        };
        std::fs::create_dir_all(out).map_err(|e| IndexError::io(out, e))?;
        let marker = out.join(MARKER);
        std::fs::write(&marker, MARKER_TEXT).map_err(|e| IndexError::io(&marker, e))?;
        let mut manifest = write_passages(corpus, out, options)?;
        let mut files = vec![docstore::DATA.to_owned(), docstore::OFFSETS.to_owned()];
        if manifest.bm25.is_some() {
            files.extend(files_under(out, BM25_DIR)?);
        }
        record_files(out, &mut manifest, files, &options.cancel)?;
        manifest::write(out, &manifest)?;
        Ok(IndexBuilder {
            dir: out.to_owned(),
            manifest,
            cancel: options.cancel.clone(),
            cleanup,
        })
    }

    /// The index directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The manifest as it stands (written after each stage, incomplete until
    /// [`IndexBuilder::finish`]).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Records the dense vectors written into the `dense` directory (by a
    /// [`crate::dense::DenseWriter`]), after checking they open.
    pub fn add_dense(&mut self, dense: DenseInfo) -> Result<(), IndexError> {
        record_dense(&self.dir, &mut self.manifest, dense)?;
        let vectors = format!("{DENSE_DIR}/{}", dense::VECTORS);
        record_files(&self.dir, &mut self.manifest, [vectors], &self.cancel)?;
        manifest::write(&self.dir, &self.manifest)
    }

    /// Builds an HNSW graph over the dense vectors on `threads` threads.
    pub fn add_hnsw(
        &mut self,
        settings: HnswSettings,
        threads: usize,
        progress: bool,
    ) -> Result<(), IndexError> {
        build_graph(
            &self.dir,
            &mut self.manifest,
            settings,
            threads,
            progress,
            &self.cancel,
        )?;
        manifest::write(&self.dir, &self.manifest)
    }

    /// Writes the manifest marked complete, which commits the index; returns it.
    pub fn finish(self) -> Result<Manifest, IndexError> {
        let IndexBuilder {
            dir,
            mut manifest,
            mut cleanup,
            ..
        } = self;
        manifest.complete = true;
        manifest::write(&dir, &manifest)?;
        cleanup.armed = false;
        Ok(manifest)
    }
}

/// The files under `dir/sub`, as `sub/…` paths, tantivy's transient lock files aside.
fn files_under(dir: &Path, sub: &str) -> Result<Vec<String>, IndexError> {
    let mut out = Vec::new();
    let mut pending = vec![sub.to_owned()];
    while let Some(rel) = pending.pop() {
        let path = dir.join(&rel);
        for entry in std::fs::read_dir(&path).map_err(|e| IndexError::io(&path, e))? {
            let entry = entry.map_err(|e| IndexError::io(&path, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let child = format!("{rel}/{name}");
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(child),
                Ok(_) if name.ends_with(".lock") => {}
                Ok(_) => out.push(child),
                Err(e) => return Err(IndexError::io(&entry.path(), e)),
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads the files `names` (relative to `dir`) back and records their checksums.
fn record_files(
    dir: &Path,
    manifest: &mut Manifest,
    names: impl IntoIterator<Item = String>,
    cancel: &Cancel,
) -> Result<(), IndexError> {
    for name in names {
        let sum = FileSum::of(&dir.join(&name), cancel)?;
        manifest.files.insert(name, sum);
    }
    Ok(())
}

/// Whether `name` (a manifest `files` key) belongs to the HNSW graph (of any format).
fn is_graph_file(name: &str) -> bool {
    name.strip_prefix(DENSE_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(graph::is_graph_file)
}

/// An error unless `manifest` (of the index in `dir`) is complete.
fn check_complete(dir: &Path, manifest: &Manifest) -> Result<(), IndexError> {
    if manifest.complete {
        return Ok(());
    }
    Err(IndexError::Incomplete(format!(
        "{}: the build of this index was interrupted (its manifest records only: {}); \
         rebuild it with `searchr1 index --overwrite`",
        dir.display(),
        manifest.stages()
    )))
}

/// Stores the passages of `corpus` in `out` (and indexes them for BM25 when set);
/// returns the manifest of an index of just those.
fn write_passages(corpus: &Path, out: &Path, options: &BuildOptions) -> Result<Manifest, IndexError> {
    let total = std::fs::metadata(corpus)
        .map_err(|e| IndexError::io(corpus, e))?
        .len();
    let mut reader = CorpusReader::open(corpus, options.skip_bad)?;
    let bar = progress_bar(options.progress, total, "indexing", "{bytes}/{total_bytes}");
    let started = std::time::Instant::now();
    let checksum = reader.checksum_handle();
    let cancel = &options.cancel;
    let on_passage = |n: u64| {
        if n.is_multiple_of(CANCEL_EVERY) {
            cancel.check()?;
        }
        if n.is_multiple_of(4096) {
            bar.set_position(checksum.bytes());
            let rate = n as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("{n} passages, {rate:.0}/s"));
        }
        Ok::<_, IndexError>(())
    };
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
                on_passage(n)?;
            }
            n
        }
    };
    drop(stored);
    store.finish()?;
    bar.finish_and_clear();
    if passages == 0 {
        return Err(CorpusError::Empty {
            path: corpus.to_owned(),
            skipped: reader.skipped(),
        }
        .into());
    }
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

/// Builds an HNSW graph over the dense vectors of `dir` and records it, and its
/// files, in `manifest`. A failed or cancelled build removes the graph's files.
fn build_graph(
    dir: &Path,
    manifest: &mut Manifest,
    settings: HnswSettings,
    threads: usize,
    progress: bool,
    cancel: &Cancel,
) -> Result<(), IndexError> {
    let Some(dense) = manifest.dense.as_ref() else {
        return Err(IndexError::Settings(format!(
            "{} has no dense vectors to build a graph over",
            dir.display()
        )));
    };
    let dense_dir = dir.join(DENSE_DIR);
    let flat = FlatIndex::open(&dense_dir, dense.vectors)?;
    let bar = progress_bar(progress, flat.rows() as u64, "graph", "{pos}/{len} vectors");
    // On other threads, so that this one can ask the cancel while they work.
    let built = cancel::run(cancel, |stop| {
        HnswIndex::build(
            &dense_dir,
            &flat,
            settings,
            threads,
            |n| bar.set_position(n as u64),
            stop,
        )
    });
    bar.finish_and_clear();
    let recorded = built.and_then(|()| {
        manifest.files.retain(|name, _| !is_graph_file(name));
        let graph_file = format!("{DENSE_DIR}/{}", graph::GRAPH);
        record_files(dir, manifest, [graph_file], cancel)
    });
    if let Err(e) = recorded {
        manifest.files.retain(|name, _| !is_graph_file(name));
        graph::remove_graph_files(&dense_dir);
        return Err(e);
    }
    if let Some(dense) = manifest.dense.as_mut() {
        dense.hnsw = Some(settings);
    }
    Ok(())
}

/// Builds an HNSW graph over the dense vectors of the finished index `dir` (replacing
/// any graph it had) and records it. The old graph leaves the manifest before its files
/// are touched: an interrupted add leaves a complete index without a graph.
pub fn add_hnsw(
    dir: &Path,
    settings: HnswSettings,
    threads: usize,
    progress: bool,
    cancel: &Cancel,
) -> Result<Manifest, IndexError> {
    settings.validate()?;
    let mut manifest = manifest::read(dir)?;
    check_complete(dir, &manifest)?;
    let had_graph = manifest.dense.as_mut().and_then(|d| d.hnsw.take()).is_some();
    let recorded = manifest.files.len();
    manifest.files.retain(|name, _| !is_graph_file(name));
    if had_graph || manifest.files.len() != recorded {
        manifest::write(dir, &manifest)?;
    }
    build_graph(dir, &mut manifest, settings, threads, progress, cancel)?;
    manifest::write(dir, &manifest)?;
    Ok(manifest)
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Files read in full and found as the build wrote them.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Files the manifest records (none for an index from before checksums).
    pub recorded: usize,
    /// What is wrong, one line each, each naming its file; none: the index is intact.
    pub problems: Vec<String>,
}

/// Reads every file the manifest of the index in `dir` records and compares it with
/// the checksums there; when all match, opens the index too. An unreadable manifest or
/// an interrupted build is an error; damaged files are `problems`.
pub fn verify(dir: &Path, cancel: &Cancel) -> Result<Verified, IndexError> {
    let manifest = manifest::read(dir)?;
    check_complete(dir, &manifest)?;
    let mut report = Verified {
        recorded: manifest.files.len(),
        ..Verified::default()
    };
    for (name, sum) in &manifest.files {
        match sum.check_full(&dir.join(name), cancel)? {
            Some(problem) => report.problems.push(problem),
            None => {
                report.files += 1;
                report.bytes += sum.bytes;
            }
        }
    }
    if report.problems.is_empty() {
        if let Err(e) = IndexDir::open(dir) {
            report.problems.push(e.to_string());
        }
    }
    Ok(report)
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
    /// Opens the index in `dir`: checks that its manifest is complete, and the size
    /// and the ends of every file it records (see [`crate::checksum`]; [`verify`]
    /// reads them whole).
    pub fn open(dir: &Path) -> Result<Self, IndexError> {
        let manifest = manifest::read(dir)?;
        check_complete(dir, &manifest)?;
        for (name, sum) in &manifest.files {
            if let Some(problem) = sum.check_quick(&dir.join(name))? {
                return Err(IndexError::Corrupt(format!(
                    "{problem}; rebuild the index with `searchr1 index --overwrite`"
                )));
            }
        }
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
    use crate::dense::{DType, DenseSettings, DenseWriter};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("searchr1-index-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const TWO: &str = "{\"id\": \"a\", \"contents\": \"\\\"Paris\\\"\\nParis is the capital of France.\"}\n\
                       {\"id\": \"b\", \"contents\": \"\\\"Rome\\\"\\nRome is the capital of Italy.\"}\n";

    fn overwrite() -> BuildOptions {
        BuildOptions {
            overwrite: true,
            ..BuildOptions::default()
        }
    }

    #[test]
    fn build_open_and_refuse() {
        let dir = tmp("build");
        let corpus = dir.join("corpus.jsonl");
        std::fs::write(&corpus, TWO).unwrap();
        let out = dir.join("index");
        let manifest = build(&corpus, &out, &BuildOptions::default()).unwrap();
        assert_eq!(manifest.corpus.passages, 2);
        assert!(manifest.complete && out.join(MARKER).is_file());
        let names: Vec<&str> = manifest.files.keys().map(String::as_str).collect();
        assert!(names.starts_with(&["bm25/.managed.json"]), "{names:?}");
        assert!(names.contains(&"passages.bin") && names.contains(&"passages.idx"));
        let index = IndexDir::open(&out).unwrap();
        let hits = index.search_bm25(&["capital of italy".into()], 1).unwrap();
        assert_eq!(hits[0][0].id, "b");
        drop(index);
        let report = verify(&out, &Cancel::default()).unwrap();
        assert_eq!((report.files, report.recorded), (names.len(), names.len()));
        assert!(report.problems.is_empty(), "{:?}", report.problems);

        let again = build(&corpus, &out, &BuildOptions::default()).unwrap_err();
        assert!(
            again
                .to_string()
                .contains("holds a searchr1 index; refusing to overwrite"),
            "{again}"
        );

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
        assert!(
            matches!(err, IndexError::Incomplete(_)) && err.to_string().contains("interrupted"),
            "{err}"
        );
        std::fs::remove_file(out.join(MARKER)).unwrap();
        let err = IndexDir::open(&out).err().unwrap();
        assert!(err.to_string().contains("build did not finish"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_manifest_commits_each_stage_and_an_unfinished_build_leaves_nothing() {
        let dir = tmp("builder");
        let corpus = dir.join("corpus.jsonl");
        std::fs::write(&corpus, "{\"id\": \"a\", \"contents\": \"x\"}\n").unwrap();
        let out = dir.join("index");
        let mut builder = IndexBuilder::create(&corpus, &out, &BuildOptions::default()).unwrap();
        assert!(out.join("passages.bin").is_file());
        let written = manifest::read(&out).unwrap();
        assert!(!written.complete && written.bm25.is_some());
        assert_eq!(&written, builder.manifest());
        let err = IndexDir::open(&out).err().unwrap().to_string();
        assert!(
            err.contains("interrupted (its manifest records only: passages, BM25)")
                && err.contains("--overwrite"),
            "{err}"
        );
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

        // Dense vectors and a graph: each stage is in the manifest as it ends.
        let mut builder = IndexBuilder::create(&corpus, &out, &BuildOptions::default()).unwrap();
        let mut writer = DenseWriter::create(&out.join(DENSE_DIR), 4, DType::F32).unwrap();
        writer.add(&[0.5, 0.5, 0.5, 0.5]).unwrap();
        let rows = writer.finish().unwrap();
        let dense = DenseInfo {
            vectors: DenseSettings {
                dim: 4,
                dtype: DType::F32,
                rows,
            },
            encoder: serde_json::json!({"model": "/m"}),
            hnsw: None,
        };
        builder.add_dense(dense).unwrap();
        let written = manifest::read(&out).unwrap();
        assert!(!written.complete && written.dense.is_some());
        assert!(written.files.contains_key("dense/vectors.bin"));
        builder.add_hnsw(HnswSettings::default(), 1, false).unwrap();
        let written = manifest::read(&out).unwrap();
        assert!(!written.complete && written.dense.as_ref().unwrap().hnsw.is_some());
        assert!(written.files.contains_key("dense/hnsw.usearch"));
        let manifest = builder.finish().unwrap();
        assert!(manifest.complete);
        assert_eq!(manifest::read(&out).unwrap(), manifest);
        IndexDir::open(&out).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn overwrite_replaces_only_what_is_ours() {
        let dir = tmp("overwrite");
        let corpus = dir.join("corpus.jsonl");
        std::fs::write(&corpus, TWO).unwrap();

        let foreign = dir.join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
        for options in [BuildOptions::default(), overwrite()] {
            let err = build(&corpus, &foreign, &options).unwrap_err().to_string();
            assert!(err.contains("is not a searchr1 index") && err.contains("even with --overwrite"));
        }
        assert_eq!(
            std::fs::read_to_string(foreign.join("notes.txt")).unwrap(),
            "mine"
        );
        // A file is not a directory to build in.
        let err = build(&corpus, &foreign.join("notes.txt"), &overwrite()).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");

        // A leftover killed before its first manifest: the marker and partial files.
        let leftover = dir.join("leftover");
        std::fs::create_dir(&leftover).unwrap();
        std::fs::write(leftover.join(MARKER), MARKER_TEXT).unwrap();
        std::fs::write(leftover.join("passages.bin"), "partial").unwrap();
        let err = build(&corpus, &leftover, &BuildOptions::default()).unwrap_err();
        assert!(
            err.to_string().contains("unfinished searchr1 index build"),
            "{err}"
        );
        build(&corpus, &leftover, &overwrite()).unwrap();
        IndexDir::open(&leftover).unwrap();

        // One from before the marker: only what a build writes.
        let old = dir.join("old");
        std::fs::create_dir_all(old.join("bm25")).unwrap();
        std::fs::write(old.join("passages.bin"), "partial").unwrap();
        build(&corpus, &old, &overwrite()).unwrap();

        // A finished index is replaced; one whose corpus is missing is kept; one whose
        // rebuild fails is left empty.
        build(&corpus, &leftover, &overwrite()).unwrap();
        assert!(build(&dir.join("missing.jsonl"), &leftover, &overwrite()).is_err());
        IndexDir::open(&leftover).unwrap();
        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, "not json\n").unwrap();
        assert!(build(&bad, &leftover, &overwrite()).is_err());
        assert!(std::fs::read_dir(&leftover).unwrap().next().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_corpora_are_errors_naming_the_file() {
        let dir = tmp("empty");
        let out = dir.join("index");
        for (body, skip_bad, reason) in [
            ("", false, "the file is empty"),
            ("\n\n", false, "only blank lines"),
            (
                "not json\n{\"id\": 1}\n",
                true,
                "all 2 of its lines were malformed",
            ),
        ] {
            let corpus = dir.join("empty.jsonl");
            std::fs::write(&corpus, body).unwrap();
            for bm25 in [Some(Bm25Settings::default()), None] {
                let options = BuildOptions {
                    bm25,
                    skip_bad,
                    ..BuildOptions::default()
                };
                let err = build(&corpus, &out, &options).unwrap_err();
                let msg = err.to_string();
                assert!(
                    matches!(err, IndexError::Corpus(CorpusError::Empty { .. }))
                        && msg.contains("empty.jsonl: no passages")
                        && msg.contains(reason),
                    "{msg}"
                );
                assert!(!out.exists());
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_files_are_refused_on_open_or_found_by_verify() {
        let dir = tmp("damaged");
        let corpus = dir.join("corpus.jsonl");
        let body: String = (0..2000)
            .map(|i| format!("{{\"id\": \"p{i}\", \"contents\": \"passage number {i} about rivers\"}}\n"))
            .collect();
        std::fs::write(&corpus, body).unwrap();
        let out = dir.join("index");
        build(&corpus, &out, &BuildOptions::default()).unwrap();
        let store = out.join("passages.bin");
        let original = std::fs::read(&store).unwrap();

        // Zero-filled, same size: refused on open.
        std::fs::write(&store, vec![0u8; original.len()]).unwrap();
        let err = IndexDir::open(&out).err().unwrap().to_string();
        assert!(
            err.contains("passages.bin") && err.contains("checksum mismatch"),
            "{err}"
        );
        let report = verify(&out, &Cancel::default()).unwrap();
        assert_eq!(report.problems.len(), 1);
        assert!(report.problems[0].contains("passages.bin"));

        // One byte in the middle: opens (only the ends are read), verify finds it.
        let mut changed = original.clone();
        changed[original.len() / 2] ^= 0x20;
        std::fs::write(&store, &changed).unwrap();
        IndexDir::open(&out).unwrap();
        let report = verify(&out, &Cancel::default()).unwrap();
        assert!(
            report.problems.len() == 1 && report.problems[0].contains("passages.bin: CRC-32"),
            "{report:?}"
        );

        // Truncated: refused on open.
        std::fs::write(&store, &original[..original.len() - 1]).unwrap();
        let err = IndexDir::open(&out).err().unwrap().to_string();
        assert!(err.contains("bytes, but the manifest records"), "{err}");
        std::fs::write(&store, &original).unwrap();
        assert!(verify(&out, &Cancel::default()).unwrap().problems.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cancel_stops_the_build_and_removes_it() {
        let dir = tmp("cancel");
        let corpus = dir.join("corpus.jsonl");
        let body: String = (0..10_000)
            .map(|i| format!("{{\"id\": \"p{i}\", \"contents\": \"w{i}\"}}\n"))
            .collect();
        std::fs::write(&corpus, body).unwrap();
        let out = dir.join("index");
        for bm25 in [Some(Bm25Settings::default()), None] {
            let asked = Arc::new(AtomicUsize::new(0));
            let counter = asked.clone();
            let options = BuildOptions {
                bm25,
                cancel: Cancel::new(move || counter.fetch_add(1, Ordering::Relaxed) == 3),
                ..BuildOptions::default()
            };
            let err = build(&corpus, &out, &options).unwrap_err();
            assert!(matches!(err, IndexError::Cancelled), "{err}");
            assert_eq!(
                asked.load(Ordering::Relaxed),
                4,
                "asked every 1024 passages until told"
            );
            assert!(!out.exists());
        }

        // Adding a graph to a finished index, cancelled: the index stays, without one.
        let mut builder = IndexBuilder::create(&corpus, &out, &BuildOptions::default()).unwrap();
        let mut writer = DenseWriter::create(&out.join(DENSE_DIR), 8, DType::F32).unwrap();
        let vectors: Vec<f32> = (0..10_000 * 8).map(|i| ((i * 37 % 101) as f32) / 101.0).collect();
        writer.add(&vectors).unwrap();
        let rows = writer.finish().unwrap();
        builder
            .add_dense(DenseInfo {
                vectors: DenseSettings {
                    dim: 8,
                    dtype: DType::F32,
                    rows,
                },
                encoder: serde_json::json!({"model": "/m"}),
                hnsw: None,
            })
            .unwrap();
        builder.add_hnsw(HnswSettings::default(), 2, false).unwrap();
        builder.finish().unwrap();
        let stop = Cancel::new(|| true);
        let err = add_hnsw(&out, HnswSettings::default(), 2, false, &stop).unwrap_err();
        assert!(matches!(err, IndexError::Cancelled), "{err}");
        let index = IndexDir::open(&out).unwrap();
        assert!(!index.has_hnsw() && index.manifest().complete);
        assert!(!out.join(DENSE_DIR).join(graph::GRAPH).exists());
        assert!(!index.manifest().files.keys().any(|name| is_graph_file(name)));
        drop(index);
        let manifest = add_hnsw(&out, HnswSettings::default(), 2, false, &Cancel::default()).unwrap();
        assert!(manifest.files.contains_key("dense/hnsw.usearch"));
        assert!(IndexDir::open(&out).unwrap().has_hnsw());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
