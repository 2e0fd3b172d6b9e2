//! Dense vectors: exact inner-product search over a memory-mapped matrix.
//!
//! The vectors (L2-normalised by the encoder, so the inner product is the cosine) are
//! stored row-major as f32, f16 or i8 in `vectors.bin`, row `i` being passage `i` of the
//! index's passage store. An i8 row is its scale (f32) then its values (see
//! [`quantize_row`]); a quarter of the f32 size, searched exactly against the stored
//! (quantized) values. A batch of queries is searched as matrix products: the
//! rows are cut into blocks, each block multiplies the whole query batch at once
//! (an SGEMM, by the `gemm` crate), and every query keeps its best `k`; blocks run in
//! parallel on rayon.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::f16;
use memmap2::Mmap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::IndexError;
use crate::simd;
use crate::topk::{Scored, TopK};

pub(crate) const VECTORS: &str = "vectors.bin";
/// Rows multiplied at once: with 384-d f32 rows a block is 1.5 MiB. Large blocks
/// amortise the GEMM's packing of its operands (measured: 512 x 256 ran 10% slower).
const BLOCK_ROWS: usize = 1024;
/// Queries multiplied at once, bounding the score buffer to 4 MiB per thread.
const BLOCK_QUERIES: usize = 1024;
/// Rows per rayon task.
const TASK_ROWS: usize = 16 * BLOCK_ROWS;

/// How vectors are stored (f32 unless asked otherwise: exact search scores the stored
/// values, so the default loses nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    #[default]
    F32,
    F16,
    I8,
}

impl DType {
    pub fn parse(name: &str) -> Result<Self, IndexError> {
        match name {
            "f32" => Ok(DType::F32),
            "f16" => Ok(DType::F16),
            "i8" => Ok(DType::I8),
            other => Err(IndexError::Settings(format!(
                "unknown vector dtype {other:?}; expected \"f32\", \"f16\" or \"i8\""
            ))),
        }
    }

    /// The name [`DType::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::I8 => "i8",
        }
    }

    /// Bytes a row of `dim` values takes in `vectors.bin`.
    pub(crate) fn row_bytes(self, dim: usize) -> usize {
        match self {
            DType::F32 => 4 * dim,
            DType::F16 => 2 * dim,
            DType::I8 => 4 + dim,
        }
    }
}

/// A row as i8: `scale` (its largest |value| / 127) and `round(v / scale)` into `out`,
/// so row values come back as `q · scale`, each within `scale / 2` of the original.
pub fn quantize_row(v: &[f32], out: &mut Vec<i8>) -> f32 {
    let peak = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = peak / 127.0;
    out.clear();
    if scale > 0.0 {
        out.extend(v.iter().map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8));
    } else {
        out.resize(v.len(), 0);
    }
    scale
}

/// What a [`FlatIndex`] needs to read `vectors.bin`: rows of `dim` values as `dtype`
/// (recorded in the manifest's dense part).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenseSettings {
    pub dim: usize,
    pub dtype: DType,
    pub rows: u64,
}

/// Appends vectors, one row per passage in corpus order.
pub struct DenseWriter {
    dir: PathBuf,
    dim: usize,
    dtype: DType,
    vectors: BufWriter<File>,
    rows: usize,
}

impl DenseWriter {
    pub fn create(dir: &Path, dim: usize, dtype: DType) -> Result<Self, IndexError> {
        if dim == 0 {
            return Err(IndexError::Settings("vectors need at least one dimension".into()));
        }
        std::fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
        let path = dir.join(VECTORS);
        let file = File::create(&path).map_err(|e| IndexError::io(&path, e))?;
        Ok(DenseWriter {
            dir: dir.to_owned(),
            dim,
            dtype,
            vectors: BufWriter::with_capacity(1 << 20, file),
            rows: 0,
        })
    }

    /// Adds the vectors of the next passages (`vectors.len()` a multiple of `dim`,
    /// row-major).
    pub fn add(&mut self, vectors: &[f32]) -> Result<(), IndexError> {
        if !vectors.len().is_multiple_of(self.dim) {
            return Err(IndexError::Settings(format!(
                "{} vector values do not make rows of {} values",
                vectors.len(),
                self.dim
            )));
        }
        if let Some(bad) = vectors.iter().position(|v| !v.is_finite()) {
            return Err(IndexError::Settings(format!(
                "the vector of row {} has a non-finite value",
                self.rows + bad / self.dim
            )));
        }
        self.rows += vectors.len() / self.dim;
        let path = self.dir.join(VECTORS);
        let io = |e| IndexError::io(&path, e);
        match self.dtype {
            DType::F32 => {
                for v in vectors {
                    self.vectors.write_all(&v.to_le_bytes()).map_err(io)?;
                }
            }
            DType::F16 => {
                for v in vectors {
                    self.vectors
                        .write_all(&f16::from_f32(*v).to_le_bytes())
                        .map_err(io)?;
                }
            }
            DType::I8 => {
                let mut quantized = Vec::with_capacity(self.dim);
                for row in vectors.chunks_exact(self.dim) {
                    let scale = quantize_row(row, &mut quantized);
                    self.vectors.write_all(&scale.to_le_bytes()).map_err(io)?;
                    self.vectors.write_all(bytemuck_i8(&quantized)).map_err(io)?;
                }
            }
        }
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn finish(mut self) -> Result<u64, IndexError> {
        let path = self.dir.join(VECTORS);
        self.vectors.flush().map_err(|e| IndexError::io(&path, e))?;
        Ok(self.rows as u64)
    }
}

/// A stored i8 row split into its scale (little-endian f32) and its codes.
#[inline]
fn i8_row(bytes: &[u8]) -> (f32, &[u8]) {
    let (scale, codes) = bytes.split_at(4);
    (
        f32::from_le_bytes([scale[0], scale[1], scale[2], scale[3]]),
        codes,
    )
}

/// An exact inner-product index over memory-mapped vectors.
pub struct FlatIndex {
    vectors: Mmap,
    settings: DenseSettings,
}

impl FlatIndex {
    pub fn open(dir: &Path, settings: DenseSettings) -> Result<Self, IndexError> {
        let path = dir.join(VECTORS);
        let file = File::open(&path).map_err(|e| IndexError::io(&path, e))?;
        // SAFETY: index files are written once and never modified while opened.
        let vectors = unsafe { Mmap::map(&file) }.map_err(|e| IndexError::io(&path, e))?;
        let want = settings.rows as usize * settings.dtype.row_bytes(settings.dim);
        if vectors.len() != want {
            return Err(IndexError::Corrupt(format!(
                "{}: {} bytes, but {} rows of {} {:?} values need {want}",
                path.display(),
                vectors.len(),
                settings.rows,
                settings.dim,
                settings.dtype
            )));
        }
        Ok(FlatIndex { vectors, settings })
    }

    pub fn dim(&self) -> usize {
        self.settings.dim
    }

    pub fn rows(&self) -> usize {
        self.settings.rows as usize
    }

    pub fn dtype(&self) -> DType {
        self.settings.dtype
    }

    /// The stored bytes of `row`.
    #[inline]
    fn row_data(&self, row: usize) -> &[u8] {
        let size = self.settings.dtype.row_bytes(self.settings.dim);
        &self.vectors[row * size..(row + 1) * size]
    }

    /// `q · row` over the stored values of `row` (SIMD; see [`crate::simd`]).
    #[inline]
    pub fn dot(&self, q: &[f32], row: usize) -> f32 {
        let bytes = self.row_data(row);
        match self.settings.dtype {
            DType::F32 => simd::dot_f32(q, bytes),
            DType::F16 => simd::dot_f16(q, bytes),
            DType::I8 => {
                let (scale, codes) = i8_row(bytes);
                scale * simd::dot_i8(q, codes)
            }
        }
    }

    /// Starts loading `row` into cache ahead of a [`FlatIndex::dot`] with it.
    #[inline]
    pub fn prefetch(&self, row: usize) {
        simd::prefetch(self.row_data(row));
    }

    /// Rows `start..end` as f32, row-major, borrowed when stored as f32.
    pub fn vectors<'a>(&'a self, start: usize, end: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
        let d = self.settings.dim;
        match self.settings.dtype {
            DType::F32 => {
                let bytes = &self.vectors[start * d * 4..end * d * 4];
                // The map is page-aligned and rows are 4-byte multiples, so the cast is
                // aligned; fall back to copying if it is not.
                match bytemuck_f32(bytes) {
                    Some(slice) => slice,
                    None => {
                        buf.clear();
                        buf.extend(
                            bytes
                                .chunks_exact(4)
                                .map(|c| f32::from_le_bytes(c.try_into().unwrap())),
                        );
                        buf
                    }
                }
            }
            DType::F16 => {
                let bytes = &self.vectors[start * d * 2..end * d * 2];
                buf.clear();
                buf.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
                );
                buf
            }
            DType::I8 => {
                let row_bytes = DType::I8.row_bytes(d);
                let bytes = &self.vectors[start * row_bytes..end * row_bytes];
                buf.clear();
                for row in bytes.chunks_exact(row_bytes) {
                    let (scale, codes) = i8_row(row);
                    buf.extend(codes.iter().map(|&q| (q as i8) as f32 * scale));
                }
                buf
            }
        }
    }

    /// The best `k` rows for each query (`queries`: `n × dim`, row-major), best first,
    /// as `(row, inner product)`.
    pub fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<(usize, f32)>>, IndexError> {
        let d = self.settings.dim;
        let n = query_count(queries, d)?;
        let rows = self.rows();
        if n == 0 || k == 0 || rows == 0 {
            return Ok(vec![Vec::new(); n]);
        }
        let tasks: Vec<(usize, usize)> = (0..rows)
            .step_by(TASK_ROWS)
            .map(|s| (s, (s + TASK_ROWS).min(rows)))
            .collect();
        let partial: Vec<Vec<TopK>> = tasks
            .into_par_iter()
            .map(|(start, end)| {
                let mut tops = vec![TopK::new(k); n];
                let mut buf = Vec::new();
                let mut scores = vec![0f32; BLOCK_QUERIES * BLOCK_ROWS];
                for block_start in (start..end).step_by(BLOCK_ROWS) {
                    let block_end = (block_start + BLOCK_ROWS).min(end);
                    let m = block_end - block_start;
                    let block = self.vectors(block_start, block_end, &mut buf);
                    for q_start in (0..n).step_by(BLOCK_QUERIES) {
                        let q_end = (q_start + BLOCK_QUERIES).min(n);
                        let qn = q_end - q_start;
                        // scores[qn × m] = Q[qn × d] · Bᵀ, with B the block [m × d].
                        // SAFETY: every pointer/stride pair describes a slice in bounds.
                        unsafe {
                            gemm::gemm(
                                qn,
                                m,
                                d,
                                scores.as_mut_ptr(),
                                1,
                                m as isize,
                                false,
                                queries[q_start * d..].as_ptr(),
                                1,
                                d as isize,
                                block.as_ptr(),
                                d as isize,
                                1,
                                0.0,
                                1.0,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            );
                        }
                        for (qi, top) in tops[q_start..q_end].iter_mut().enumerate() {
                            keep_best(top, &scores[qi * m..(qi + 1) * m], block_start);
                        }
                    }
                }
                tops
            })
            .collect();
        let mut merged = vec![TopK::new(k); n];
        for tops in partial {
            for (m, t) in merged.iter_mut().zip(tops) {
                m.merge(t);
            }
        }
        Ok(merged
            .into_iter()
            .map(|t| {
                t.into_sorted()
                    .into_iter()
                    .map(|c| (c.key as usize, c.score))
                    .collect()
            })
            .collect())
    }
}

/// Scores looked at together by [`keep_best`]: two AVX-512 registers, four AVX2 ones.
const SCAN: usize = 32;

/// Pushes into `top` the scores (of rows `first..`) that reach its threshold. Past the
/// first blocks almost no score does, so each [`SCAN`] scores are first reduced to their
/// maximum, lane by lane (which the compiler vectorises), and only a chunk whose
/// maximum reaches the threshold is looked at one score at a time.
fn keep_best(top: &mut TopK, scores: &[f32], first: usize) {
    let mut threshold = top.threshold();
    for (c, chunk) in scores.chunks(SCAN).enumerate() {
        if chunk_max(chunk) < threshold {
            continue;
        }
        for (j, &score) in chunk.iter().enumerate() {
            if score >= threshold {
                let key = (first + c * SCAN + j) as u64;
                top.push(Scored { score, key });
                threshold = top.threshold();
            }
        }
    }
}

/// The largest of `chunk` (at most [`SCAN`] scores; NaN never wins), as 8 lanes of
/// maxima: independent lanes, unlike one running maximum, vectorise.
#[inline]
fn chunk_max(chunk: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut eights = chunk.chunks_exact(8);
    for eight in &mut eights {
        for (lane, &s) in lanes.iter_mut().zip(eight) {
            *lane = if s > *lane { s } else { *lane };
        }
    }
    let rest = eights.remainder().iter();
    lanes
        .into_iter()
        .chain(rest.copied())
        .fold(f32::NEG_INFINITY, |m, s| if s > m { s } else { m })
}

/// How many `dim`-long query vectors `queries` holds (an error if it is not whole rows).
pub(crate) fn query_count(queries: &[f32], dim: usize) -> Result<usize, IndexError> {
    if !queries.len().is_multiple_of(dim) {
        return Err(IndexError::Settings(format!(
            "query vectors have {} values, not a multiple of the index's {dim} dimensions",
            queries.len()
        )));
    }
    Ok(queries.len() / dim)
}

/// i8 values as the bytes they are.
pub(crate) fn bytemuck_i8(values: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), values.len()) }
}

/// `bytes` as f32 values, when aligned (little-endian targets only).
fn bytemuck_f32(bytes: &[u8]) -> Option<&[f32]> {
    if cfg!(target_endian = "little")
        && (bytes.as_ptr() as usize).is_multiple_of(4)
        && bytes.len().is_multiple_of(4)
    {
        // SAFETY: aligned, in bounds, and every bit pattern is a valid f32.
        Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), bytes.len() / 4) })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rows: u64, dim: usize, dtype: DType) -> DenseSettings {
        DenseSettings { dim, dtype, rows }
    }

    #[test]
    fn exact_search_matches_brute_force() {
        for dtype in [DType::F32, DType::F16, DType::I8] {
            let dir = std::env::temp_dir().join(format!("searchr1-dense-{}-{dtype:?}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let (rows, dim) = (20_000usize, 8usize);
            let mut seed = 1u64;
            let mut next = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                ((seed % 2001) as f32 - 1000.0) / 1000.0
            };
            let vectors: Vec<f32> = (0..rows * dim).map(|_| next()).collect();
            let mut w = DenseWriter::create(&dir, dim, dtype).unwrap();
            w.add(&vectors[..dim * 7]).unwrap();
            w.add(&vectors[dim * 7..]).unwrap();
            assert!(w.add(&vectors[..dim + 1]).is_err());
            assert_eq!(w.finish().unwrap(), rows as u64);
            let index = FlatIndex::open(&dir, settings(rows as u64, dim, dtype)).unwrap();
            let queries: Vec<f32> = (0..300 * dim).map(|_| next()).collect();
            let got = index.search(&queries, 5).unwrap();
            let stored = |r: usize, c: usize| match dtype {
                DType::F32 => vectors[r * dim + c],
                DType::F16 => f16::from_f32(vectors[r * dim + c]).to_f32(),
                DType::I8 => {
                    let mut q = Vec::new();
                    let scale = quantize_row(&vectors[r * dim..(r + 1) * dim], &mut q);
                    q[c] as f32 * scale
                }
            };
            for (q, hits) in got.iter().enumerate() {
                let mut all: Vec<(usize, f32)> = (0..rows)
                    .map(|r| (r, (0..dim).map(|c| queries[q * dim + c] * stored(r, c)).sum()))
                    .collect();
                all.sort_by(|a, b| b.1.total_cmp(&a.1));
                for (h, want) in hits.iter().zip(&all) {
                    assert!(
                        (h.1 - want.1).abs() < 1e-4,
                        "{dtype:?} query {q}: {h:?} vs {want:?}"
                    );
                }
            }
            assert!(FlatIndex::open(&dir, settings(rows as u64 + 1, dim, dtype)).is_err());
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn dtype_names_parse_back() {
        for dtype in [DType::F32, DType::F16, DType::I8] {
            assert_eq!(DType::parse(dtype.name()).unwrap(), dtype);
        }
        assert!(DType::parse("f64").is_err());
    }

    #[test]
    fn quantized_rows_stay_within_half_a_step() {
        let mut q = Vec::new();
        let row = [0.3f32, -0.1, 0.0, 0.29, -0.3];
        let scale = quantize_row(&row, &mut q);
        assert_eq!(q, [127, -42, 0, 123, -127]);
        for (x, v) in row.iter().zip(&q) {
            assert!((x - *v as f32 * scale).abs() <= scale / 2.0 + 1e-7);
        }
        assert_eq!(quantize_row(&[0.0, 0.0], &mut q), 0.0);
        assert_eq!(q, [0, 0]);
    }
}
