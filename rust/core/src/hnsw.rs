//! Approximate dense search: an HNSW graph (usearch) over the flat index's vectors.
//!
//! The graph, with its own copy of the vectors quantised to f32, f16 or i8, lives in
//! `hnsw.usearch` beside the flat vectors; keys are row numbers, so hits resolve to
//! passages through the same store. It is opened memory-mapped (`view`), and a batch
//! of queries is searched on rayon, one query per task.

use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use usearch::ffi::{IndexOptions, MetricKind, ScalarKind};

use crate::dense::{query_count, FlatIndex};
use crate::error::IndexError;
use crate::topk::{Scored, TopK};

const GRAPH: &str = "hnsw.usearch";

/// How the graph stores vectors.
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

    fn scalar(self) -> ScalarKind {
        match self {
            Quantization::F32 => ScalarKind::F32,
            Quantization::F16 => ScalarKind::F16,
            Quantization::I8 => ScalarKind::I8,
        }
    }
}

/// Graph settings, recorded in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HnswSettings {
    pub dtype: Quantization,
    /// Links per node (M).
    pub connectivity: usize,
    /// Candidates kept while inserting (efConstruction).
    pub expansion_add: usize,
    /// Candidates kept while searching (efSearch): higher is slower and more exact.
    pub expansion_search: usize,
}

impl Default for HnswSettings {
    fn default() -> Self {
        HnswSettings {
            // i8 walks fastest: about 2x the f16 and f32 graphs at equal recall (benches/README.md).
            dtype: Quantization::I8,
            connectivity: 16,
            expansion_add: 128,
            // 64 reached a recall@10 of only 0.75 on 100k clustered 64-d vectors; 256
            // reached 0.96 (benches/README.md). The flat index answers exactly anyway.
            expansion_search: 256,
        }
    }
}

impl HnswSettings {
    fn options(&self, dim: usize) -> IndexOptions {
        IndexOptions {
            dimensions: dim,
            metric: MetricKind::IP,
            quantization: self.dtype.scalar(),
            connectivity: self.connectivity,
            expansion_add: self.expansion_add,
            expansion_search: self.expansion_search,
            multi: false,
        }
    }

    pub fn validate(&self) -> Result<(), IndexError> {
        if self.connectivity < 2 || self.expansion_add == 0 || self.expansion_search == 0 {
            return Err(IndexError::Settings(format!(
                "HNSW needs connectivity >= 2 and positive expansions; got {self:?}"
            )));
        }
        Ok(())
    }
}

/// `a · b` with 16 independent partial sums, which the compiler turns into SIMD lanes
/// (a single running sum is one long chain of dependent additions).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn usearch_err(what: &str, e: impl std::fmt::Display) -> IndexError {
    IndexError::Corrupt(format!("usearch could not {what}: {e}"))
}

/// An HNSW graph opened memory-mapped.
pub struct HnswIndex {
    index: usearch::Index,
    dtype: Quantization,
}

impl HnswIndex {
    /// Builds the graph of every vector of `flat` into `dir`, adding rows on `threads`
    /// threads; `on_rows` is told how many rows are in after each chunk.
    pub fn build(
        dir: &Path,
        flat: &FlatIndex,
        settings: HnswSettings,
        threads: usize,
        on_rows: impl Fn(usize) + Sync,
    ) -> Result<(), IndexError> {
        settings.validate()?;
        let (rows, dim) = (flat.rows(), flat.dim());
        let index =
            usearch::Index::new(&settings.options(dim)).map_err(|e| usearch_err("create an index", e))?;
        let threads = threads.max(1);
        index
            .reserve_capacity_and_threads(rows.max(1), threads)
            .map_err(|e| usearch_err("reserve memory", e))?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| IndexError::Settings(format!("cannot start {threads} threads: {e}")))?;
        let done = std::sync::atomic::AtomicUsize::new(0);
        const CHUNK: usize = 4096;
        pool.install(|| {
            (0..rows.div_ceil(CHUNK)).into_par_iter().try_for_each(|c| {
                let (start, end) = (c * CHUNK, ((c + 1) * CHUNK).min(rows));
                let mut buf = Vec::new();
                let block = flat.vectors(start, end, &mut buf);
                for (i, v) in block.chunks_exact(dim).enumerate() {
                    index
                        .add::<f32>((start + i) as u64, v)
                        .map_err(|e| usearch_err("add a vector", e))?;
                }
                let n = done.fetch_add(end - start, std::sync::atomic::Ordering::Relaxed) + end - start;
                on_rows(n);
                Ok::<(), IndexError>(())
            })
        })?;
        let path = dir.join(GRAPH);
        let path_str = path
            .to_str()
            .ok_or_else(|| IndexError::Settings("index path is not UTF-8".into()))?;
        index.save(path_str).map_err(|e| usearch_err("save the graph", e))
    }

    /// Opens the graph in `dir` without reading it into memory.
    pub fn open(dir: &Path, settings: HnswSettings, dim: usize, rows: usize) -> Result<Self, IndexError> {
        let path = dir.join(GRAPH);
        if !path.is_file() {
            return Err(IndexError::Corrupt(format!("{} is missing", path.display())));
        }
        let index =
            usearch::Index::new(&settings.options(dim)).map_err(|e| usearch_err("create an index", e))?;
        let path_str = path
            .to_str()
            .ok_or_else(|| IndexError::Settings("index path is not UTF-8".into()))?;
        index
            .view(path_str)
            .map_err(|e| usearch_err(&format!("open {}", path.display()), e))?;
        if index.size() != rows || index.dimensions() != dim {
            return Err(IndexError::Corrupt(format!(
                "{}: {} vectors of {} dimensions, expected {rows} of {dim}",
                path.display(),
                index.size(),
                index.dimensions()
            )));
        }
        index.change_expansion_search(settings.expansion_search);
        Ok(HnswIndex {
            index,
            dtype: settings.dtype,
        })
    }

    /// Changes how many candidates a search keeps (efSearch).
    pub fn set_expansion_search(&self, n: usize) {
        self.index.change_expansion_search(n.max(1));
    }

    /// The (approximately) best `k` rows per query (`n × dim`), as (row, inner product).
    ///
    /// A quantized graph (f16, i8) walks with approximate distances; its efSearch best
    /// candidates are then scored exactly against `flat` (the stored vectors) and the
    /// best `k` of those returned, with exact scores. An f32 graph's scores are exact.
    pub fn search(
        &self,
        queries: &[f32],
        dim: usize,
        k: usize,
        flat: &FlatIndex,
    ) -> Result<Vec<Vec<(usize, f32)>>, IndexError> {
        query_count(queries, dim)?;
        let rerank = self.dtype != Quantization::F32;
        // A quantized graph's efSearch candidates, to be re-scored exactly.
        let wanted = if rerank {
            k.max(self.index.expansion_search())
        } else {
            k
        };
        queries
            .par_chunks_exact(dim)
            .map_init(Vec::new, |buf, q| {
                let found = self
                    .index
                    .search::<f32>(q, wanted)
                    .map_err(|e| usearch_err("search", e))?;
                if !rerank {
                    // usearch's inner-product distance is 1 - a.b.
                    return Ok(found
                        .keys
                        .iter()
                        .zip(&found.distances)
                        .map(|(&key, &d)| (key as usize, 1.0 - d))
                        .collect());
                }
                let mut top = TopK::new(k);
                for &key in &found.keys {
                    let row = key as usize;
                    let v = flat.vectors(row, row + 1, buf);
                    let score = dot(v, q);
                    top.push(Scored { score, key });
                }
                Ok(top
                    .into_sorted()
                    .into_iter()
                    .map(|s| (s.key as usize, s.score))
                    .collect())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::dot;

    #[test]
    fn dot_equals_the_plain_sum() {
        for n in [0usize, 1, 5, 16, 17, 37, 384] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
            assert!((dot(&a, &b) as f64 - plain).abs() < 1e-4, "n = {n}");
        }
    }
}
