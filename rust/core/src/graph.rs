//! Approximate dense search: usearch's HNSW graph over the dense vectors, its best
//! candidates scored again exactly against the flat vectors.
//!
//! The graph is usearch's (Unum's C++ library behind its `cxx` bridge), so there is one
//! graph implementation, kept upstream. It lives in `hnsw.usearch` beside the flat
//! vectors, with usearch's own copy of the vectors as f32, f16 or i8; keys are row
//! numbers, so hits resolve to passages through the same store, and any usearch binding
//! opens the file. It is opened memory-mapped (`view`); a batch of queries is searched
//! on rayon, one query per task. Rows are added on `threads` threads at once (usearch's
//! adds are thread-safe once capacity and threads are reserved).
//!
//! An i8 graph holds each row quantized as the flat i8 store does (its largest |value|
//! maps to 127, [`quantize_row`]) under the cosine metric, which divides each row's
//! scale out again: usearch's own cast maps a unit vector's norm to 127, which leaves a
//! 384-d embedding's values only about ±6 levels. The query is quantized the same way.
//!
//! A walk's scores are those of the graph's copy; the best [`rescore_depth`] candidates
//! are scored again against the flat vectors, so the scores (and the order) returned are
//! those of exact search.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use usearch::ffi::{IndexOptions, MetricKind, ScalarKind};

use crate::dense::{quantize_row, query_count, FlatIndex};
use crate::error::IndexError;
use crate::topk::{Scored, TopK};

pub(crate) const GRAPH: &str = "hnsw.usearch";
/// What searchr1's own graph (graph format 1) wrote beside the vectors: a build removes
/// them, and the manifest entries of either mark graph files.
pub(crate) const LEGACY: [&str; 2] = ["hnsw.graph", "hnsw"];
/// The graph format this build writes and reads: 2, usearch 2.x's `hnsw.usearch`.
/// Manifests without one (format 1) hold searchr1's own graph, or an older usearch
/// graph whose i8 rows were cast differently: neither is read any more.
pub const FORMAT: u32 = 2;
/// Rows added between two progress reports (about a second's work on one thread at
/// 384 dimensions and efConstruction 128).
const CHUNK: usize = 1024;

/// How the graph stores its copy of the vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    F32,
    F16,
    I8,
}

impl Quantization {
    pub fn parse(name: &str) -> Result<Self, IndexError> {
        match name {
            "f32" => Ok(Quantization::F32),
            "f16" => Ok(Quantization::F16),
            "i8" => Ok(Quantization::I8),
            other => Err(IndexError::Settings(format!(
                "unknown HNSW dtype {other:?}; expected \"f32\", \"f16\" or \"i8\""
            ))),
        }
    }

    /// The name [`Quantization::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Quantization::F32 => "f32",
            Quantization::F16 => "f16",
            Quantization::I8 => "i8",
        }
    }

    fn scalar(self) -> ScalarKind {
        match self {
            Quantization::F32 => ScalarKind::F32,
            Quantization::F16 => ScalarKind::F16,
            Quantization::I8 => ScalarKind::I8,
        }
    }

    /// i8 rows carry a scale of their own, which the cosine divides out; f32 and f16
    /// rows are the unit vectors themselves, whose inner product is the cosine.
    fn metric(self) -> MetricKind {
        match self {
            Quantization::I8 => MetricKind::Cos,
            Quantization::F32 | Quantization::F16 => MetricKind::IP,
        }
    }
}

/// Graph settings, recorded in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HnswSettings {
    pub dtype: Quantization,
    /// Links per node (M); usearch keeps 2M at level 0.
    pub connectivity: usize,
    /// Candidates kept while inserting (efConstruction).
    pub expansion_add: usize,
    /// Candidates kept while searching (efSearch): higher is slower and more exact.
    pub expansion_search: usize,
    /// The graph's file format ([`FORMAT`]); 1 when a manifest names none.
    #[serde(default = "HnswSettings::legacy_format")]
    pub format: u32,
}

impl Default for HnswSettings {
    fn default() -> Self {
        HnswSettings {
            // A quarter of the f32 memory to walk, re-scored exactly (benches/README.md).
            dtype: Quantization::I8,
            // usearch links a new node to M others at level 0 (faiss: 2M), so its M 24
            // reaches a recall at a smaller efSearch than M 16, faster per query
            // (benches/README.md).
            connectivity: 24,
            expansion_add: 128,
            // Recall@10 0.99 on bench_dense's vectors (0.95 at 12); the flat index
            // answers exactly anyway.
            expansion_search: 64,
            format: FORMAT,
        }
    }
}

impl HnswSettings {
    fn legacy_format() -> u32 {
        1
    }

    pub fn validate(&self) -> Result<(), IndexError> {
        if !(2..=1024).contains(&self.connectivity) || self.expansion_add == 0 || self.expansion_search == 0 {
            return Err(IndexError::Settings(format!(
                "HNSW needs 2 <= connectivity <= 1024 and positive expansions; got {self:?}"
            )));
        }
        Ok(())
    }

    fn options(&self, dim: usize) -> IndexOptions {
        IndexOptions {
            dimensions: dim,
            metric: self.dtype.metric(),
            quantization: self.dtype.scalar(),
            connectivity: self.connectivity,
            expansion_add: self.expansion_add,
            expansion_search: self.expansion_search,
            multi: false,
        }
    }
}

/// How many of a walk's candidates are scored again against the flat vectors: every
/// one it kept (`ef`) would cost a random read of a flat row each, so the walk's best
/// few times `k` (its order is close to the exact one), and never fewer than `k`.
pub fn rescore_depth(k: usize, ef: usize) -> usize {
    ef.min(4 * k).max(k)
}

fn usearch_err(what: &str, e: impl std::fmt::Display) -> IndexError {
    IndexError::Usearch(format!("could not {what}: {e}"))
}

/// `path` as the UTF-8 string usearch's bridge takes.
fn utf8(path: &Path) -> Result<&str, IndexError> {
    path.to_str()
        .ok_or_else(|| IndexError::Settings(format!("{}: usearch needs a UTF-8 path", path.display())))
}

/// An HNSW graph, opened memory-mapped.
pub struct HnswIndex {
    index: usearch::Index,
    dtype: Quantization,
    /// Mirrors usearch's efSearch: a search reads it to size its candidate list.
    expansion_search: AtomicUsize,
}

impl HnswIndex {
    /// Builds the graph of every vector of `flat` into `dir`, adding rows on `threads`
    /// threads; `on_rows` is told how many rows are in after each chunk. Raising `stop`
    /// ends the build early with [`IndexError::Cancelled`] (the files it wrote are left
    /// to the caller). The file is written beside its name and renamed into place.
    pub fn build(
        dir: &Path,
        flat: &FlatIndex,
        settings: HnswSettings,
        threads: usize,
        on_rows: impl Fn(usize) + Sync,
        stop: &AtomicBool,
    ) -> Result<(), IndexError> {
        settings.validate()?;
        remove_graph_files(dir);
        let (rows, threads) = (flat.rows(), threads.max(1));
        let index = usearch::Index::new(&settings.options(flat.dim()))
            .map_err(|e| usearch_err("create an index", e))?;
        index
            .reserve_capacity_and_threads(rows.max(1), threads)
            .map_err(|e| usearch_err(&format!("reserve room for {rows} vectors"), e))?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| IndexError::Settings(format!("cannot start {threads} threads: {e}")))?;
        let done = AtomicUsize::new(0);
        pool.install(|| {
            (0..rows.div_ceil(CHUNK)).into_par_iter().try_for_each(|c| {
                let (start, end) = (c * CHUNK, ((c + 1) * CHUNK).min(rows));
                add_rows(&index, settings.dtype, flat, start..end, stop)?;
                on_rows(done.fetch_add(end - start, Ordering::Relaxed) + end - start);
                Ok::<(), IndexError>(())
            })
        })?;
        save(&index, &dir.join(GRAPH))
    }

    /// Opens the graph in `dir` over `flat` without reading it into memory; a graph of
    /// another format is refused with what to do.
    pub fn open(dir: &Path, settings: HnswSettings, flat: &FlatIndex) -> Result<Self, IndexError> {
        if settings.format != FORMAT {
            return Err(IndexError::Mismatch(format!(
                "{}: this HNSW graph was built by an older searchr1 (graph format {}; this one \
                 reads format {FORMAT}, usearch's); rebuild it with `searchr1 index --hnsw`",
                dir.display(),
                settings.format
            )));
        }
        let path = dir.join(GRAPH);
        if !path.is_file() {
            return Err(IndexError::Corrupt(format!("{} is missing", path.display())));
        }
        let bad = |what: String| IndexError::Corrupt(format!("{}: {what}", path.display()));
        let meta =
            usearch::Index::metadata(utf8(&path)?).map_err(|e| bad(format!("not a usearch graph: {e}")))?;
        let (dim, rows) = (flat.dim(), flat.rows());
        if meta.dimensions != dim as u64
            || meta.count_present != rows as u64
            || meta.quantization != settings.dtype.scalar()
            || meta.metric != settings.dtype.metric()
        {
            return Err(bad(format!(
                "{} vectors of {} dimensions as {:?} under {:?}; the manifest says {rows} of {dim} as {}",
                meta.count_present,
                meta.dimensions,
                meta.quantization,
                meta.metric,
                settings.dtype.name()
            )));
        }
        let index =
            usearch::Index::new(&settings.options(dim)).map_err(|e| usearch_err("create an index", e))?;
        index
            .view(utf8(&path)?)
            .map_err(|e| bad(format!("usearch cannot open it: {e}")))?;
        if index.size() != rows || index.dimensions() != dim {
            return Err(bad(format!(
                "{} vectors of {} dimensions, expected {rows} of {dim}",
                index.size(),
                index.dimensions()
            )));
        }
        let graph = HnswIndex {
            index,
            dtype: settings.dtype,
            expansion_search: AtomicUsize::new(0),
        };
        graph.set_expansion_search(settings.expansion_search);
        Ok(graph)
    }

    /// Changes how many candidates a search keeps (efSearch).
    pub fn set_expansion_search(&self, n: usize) {
        let n = n.max(1);
        self.index.change_expansion_search(n);
        self.expansion_search.store(n, Ordering::Relaxed);
    }

    pub fn expansion_search(&self) -> usize {
        self.expansion_search.load(Ordering::Relaxed)
    }

    /// The (approximately) best `k` rows per query (`n × dim`), as (row, inner product)
    /// over the flat vectors, best first.
    pub fn search(
        &self,
        queries: &[f32],
        dim: usize,
        k: usize,
        flat: &FlatIndex,
    ) -> Result<Vec<Vec<(usize, f32)>>, IndexError> {
        let n = query_count(queries, dim)?;
        if k == 0 || self.index.size() == 0 {
            return Ok(vec![Vec::new(); n]);
        }
        let depth = rescore_depth(k, self.expansion_search());
        queries
            .par_chunks_exact(dim)
            .map_init(Vec::new, |codes, q| {
                let found = self.walk(q, depth, codes)?;
                // Scored again against the flat vectors: exact scores, exact order.
                let mut top = TopK::new(k);
                for &key in &found {
                    flat.prefetch(key as usize);
                }
                for &key in &found {
                    top.push(Scored {
                        score: flat.dot(q, key as usize),
                        key,
                    });
                }
                Ok(top
                    .into_sorted()
                    .into_iter()
                    .map(|s| (s.key as usize, s.score))
                    .collect())
            })
            .collect()
    }

    /// The keys of the graph's best `count` rows for `q`, best first.
    fn walk(&self, q: &[f32], count: usize, codes: &mut Vec<i8>) -> Result<Vec<u64>, IndexError> {
        let found = match self.dtype {
            Quantization::I8 => {
                quantize_row(q, codes);
                self.index.search::<i8>(codes, count)
            }
            Quantization::F32 | Quantization::F16 => self.index.search::<f32>(q, count),
        };
        Ok(found.map_err(|e| usearch_err("search", e))?.keys)
    }
}

/// Adds `rows` of `flat` to `index`, in the graph's dtype; a raised `stop` ends it
/// with [`IndexError::Cancelled`] before the next row (a row takes about a millisecond).
fn add_rows(
    index: &usearch::Index,
    dtype: Quantization,
    flat: &FlatIndex,
    rows: std::ops::Range<usize>,
    stop: &AtomicBool,
) -> Result<(), IndexError> {
    let (mut buf, mut codes) = (Vec::new(), Vec::new());
    let block = flat.vectors(rows.start, rows.end, &mut buf);
    for (key, v) in (rows.start as u64..).zip(block.chunks_exact(flat.dim())) {
        if stop.load(Ordering::Relaxed) {
            return Err(IndexError::Cancelled);
        }
        let added = match dtype {
            Quantization::I8 => {
                quantize_row(v, &mut codes);
                index.add::<i8>(key, &codes)
            }
            Quantization::F32 | Quantization::F16 => index.add::<f32>(key, v),
        };
        added.map_err(|e| usearch_err(&format!("add row {key}"), e))?;
    }
    Ok(())
}

/// Writes `index` to `path` durably: beside it first, synced, then renamed over it.
fn save(index: &usearch::Index, path: &Path) -> Result<(), IndexError> {
    let tmp = tmp_path(path);
    index
        .save(utf8(&tmp)?)
        .map_err(|e| usearch_err(&format!("write {}", tmp.display()), e))?;
    let io = |e| IndexError::io(&tmp, e);
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| IndexError::io(path, e))
}

fn tmp_path(graph: &Path) -> PathBuf {
    graph.with_extension("tmp")
}

/// Removes what a graph build writes into `dir` (the vectors' directory), ours or an
/// older searchr1's, half-written or whole.
pub(crate) fn remove_graph_files(dir: &Path) {
    let graph = dir.join(GRAPH);
    let _ = std::fs::remove_file(tmp_path(&graph));
    let _ = std::fs::remove_file(graph);
    let _ = std::fs::remove_file(dir.join(LEGACY[0]));
    let _ = std::fs::remove_dir_all(dir.join(LEGACY[1]));
}

/// Whether `name` (a path relative to the vectors' directory) is a graph file, of this
/// format or an older one.
pub(crate) fn is_graph_file(name: &str) -> bool {
    name == GRAPH || name == LEGACY[0] || name.starts_with(&format!("{}/", LEGACY[1]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dense::{DType, DenseSettings, DenseWriter};

    /// `rows` vectors of `dim` around 200 centres, L2-normalised, and a flat index of them.
    fn clustered(dir: &Path, rows: usize, dim: usize, dtype: DType) -> (Vec<f32>, FlatIndex) {
        let mut seed = 7u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 20_001) as f32 / 10_000.0 - 1.0
        };
        let centres: Vec<f32> = (0..200 * dim).map(|_| next()).collect();
        let mut vectors = Vec::with_capacity(rows * dim);
        for r in 0..rows {
            let c = (r * 7919) % 200;
            let v: Vec<f32> = (0..dim).map(|i| centres[c * dim + i] + 0.5 * next()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            vectors.extend(v.iter().map(|x| x / norm));
        }
        let _ = std::fs::remove_dir_all(dir);
        let mut w = DenseWriter::create(dir, dim, dtype).unwrap();
        w.add(&vectors).unwrap();
        w.finish().unwrap();
        let settings = DenseSettings {
            dim,
            dtype,
            rows: rows as u64,
        };
        (vectors, FlatIndex::open(dir, settings).unwrap())
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("searchr1-graph-{name}-{}", std::process::id()))
    }

    fn build(dir: &Path, flat: &FlatIndex, settings: HnswSettings) {
        HnswIndex::build(dir, flat, settings, 2, |_| {}, &AtomicBool::new(false)).unwrap();
    }

    #[test]
    fn a_damaged_or_old_graph_is_an_error_not_a_crash() {
        let dir = temp("damaged");
        let (_, flat) = clustered(&dir, 3_000, 16, DType::F32);
        let settings = HnswSettings::default();
        build(&dir, &flat, settings);
        let message = |settings: HnswSettings| match HnswIndex::open(&dir, settings, &flat) {
            Ok(_) => "opened".to_string(),
            Err(e) => e.to_string(),
        };
        assert_eq!(message(settings), "opened");
        let f16 = HnswSettings {
            dtype: Quantization::F16,
            ..settings
        };
        assert!(
            message(f16).contains("the manifest says 3000 of 16 as f16"),
            "{}",
            message(f16)
        );
        let old = message(HnswSettings {
            format: 1,
            ..settings
        });
        assert!(
            old.contains("older searchr1") && old.contains("`searchr1 index --hnsw`"),
            "{old}"
        );
        let graph = dir.join(GRAPH);
        let good = std::fs::read(&graph).unwrap();
        for cut in [good.len() - 4, good.len() / 2, 10] {
            std::fs::write(&graph, &good[..cut]).unwrap();
            let m = message(settings);
            assert!(m.contains(&graph.display().to_string()), "{cut} bytes: {m}");
        }
        std::fs::remove_file(&graph).unwrap();
        assert!(message(settings).contains("is missing"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_raised_stop_cancels_the_build() {
        let dir = temp("stop");
        let (_, flat) = clustered(&dir, 10_000, 16, DType::F32);
        let stop = AtomicBool::new(false);
        let calls = AtomicUsize::new(0);
        let stop_after_one = |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            stop.store(true, Ordering::Relaxed);
        };
        let err = HnswIndex::build(&dir, &flat, HnswSettings::default(), 1, stop_after_one, &stop);
        assert!(matches!(err, Err(IndexError::Cancelled)));
        assert_eq!(calls.load(Ordering::Relaxed), 1, "one chunk, then stopped");
        assert!(!dir.join(GRAPH).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn recall_against_exact_search_for_every_graph_dtype() {
        let (rows, dim) = (20_000, 32);
        for (flat_dtype, graph) in [
            (DType::F32, Quantization::F32),
            (DType::F32, Quantization::F16),
            (DType::F32, Quantization::I8),
            (DType::I8, Quantization::I8),
        ] {
            let dir = temp(&format!("{flat_dtype:?}-{graph:?}"));
            let (vectors, flat) = clustered(&dir, rows, dim, flat_dtype);
            let settings = HnswSettings {
                dtype: graph,
                ..HnswSettings::default()
            };
            build(&dir, &flat, settings);
            let index = HnswIndex::open(&dir, settings, &flat).unwrap();
            let queries: Vec<f32> = vectors[..300 * dim].iter().map(|x| x * 0.9 + 0.01).collect();
            let exact = flat.search(&queries, 10).unwrap();
            let got = index.search(&queries, dim, 10, &flat).unwrap();
            let mut hits = 0;
            for ((g, e), q) in got.iter().zip(&exact).zip(queries.chunks_exact(dim)) {
                assert_eq!(g.len(), 10);
                assert!(g.windows(2).all(|w| w[0].1 >= w[1].1), "best first");
                for (row, score) in g {
                    // Scores are those of the flat vectors, whatever the graph holds.
                    assert_eq!(*score, flat.dot(q, *row));
                    hits += e.iter().any(|(r, _)| r == row) as usize;
                }
            }
            let recall = hits as f64 / (10.0 * exact.len() as f64);
            assert!(
                recall >= 0.95,
                "{flat_dtype:?} vectors, {graph:?} graph: recall {recall}"
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn rescoring_reads_a_few_times_k_within_ef() {
        assert_eq!(rescore_depth(10, 64), 40);
        assert_eq!(rescore_depth(10, 16), 16);
        assert_eq!(rescore_depth(10, 4), 10);
    }

    #[test]
    fn graph_files_of_either_format_are_known() {
        assert!(is_graph_file("hnsw.usearch") && is_graph_file("hnsw.graph"));
        assert!(is_graph_file("hnsw/vectors.bin") && !is_graph_file("vectors.bin"));
    }
}
