//! Criterion benches of the retrieval search paths: batched BM25, exact dense search,
//! the HNSW search (usearch's walk, re-scored), and the re-scoring kernels per
//! instruction set.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use searchr1_core::bm25::{Bm25Index, Bm25Settings};
use searchr1_core::dense::{quantize_row, DType, DenseSettings, DenseWriter, FlatIndex};
use searchr1_core::graph::{HnswIndex, HnswSettings, Quantization};
use searchr1_core::simd;
use searchr1_core::{IndexError, Passage};

mod common;
use common::Rng;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("searchr1-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Words with a skewed law over a 5,000-word vocabulary, like text.
fn words(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| {
            let r = (rng.next() % 1_000_000) as f64 / 1_000_000.0;
            format!("w{}", (5000.0 * r * r * r) as u32)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn bench_bm25(c: &mut Criterion) {
    let dir = scratch("bm25");
    let mut rng = Rng(7);
    let passages: Vec<Result<Passage, IndexError>> = (0..20_000)
        .map(|i| {
            Ok(Passage {
                id: i.to_string(),
                contents: words(&mut rng, 60),
            })
        })
        .collect();
    let settings = Bm25Settings::default();
    Bm25Index::build(&dir, passages.into_iter(), settings, 2, 64 << 20, |_| Ok(())).unwrap();
    let index = Bm25Index::open(&dir, settings).unwrap();
    let queries: Vec<String> = (0..256).map(|_| words(&mut rng, 5)).collect();
    let mut group = c.benchmark_group("bm25_search");
    group.throughput(Throughput::Elements(queries.len() as u64));
    group.bench_function("20k_passages_256_queries_top10", |b| {
        b.iter(|| index.search(black_box(&queries), 10).unwrap())
    });
    group.finish();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A flat f32 index of `vectors` (rows of `dim`) in `dir`.
fn flat_index(dir: &Path, vectors: &[f32], dim: usize) -> FlatIndex {
    let mut writer = DenseWriter::create(dir, dim, DType::F32).unwrap();
    writer.add(vectors).unwrap();
    let rows = writer.finish().unwrap();
    let settings = DenseSettings {
        dim,
        dtype: DType::F32,
        rows,
    };
    FlatIndex::open(dir, settings).unwrap()
}

fn bench_dense(c: &mut Criterion) {
    let dir = scratch("dense");
    let (rows, dim) = (50_000usize, 128usize);
    let mut rng = Rng(11);
    let vectors: Vec<f32> = (0..rows * dim)
        .map(|_| (rng.next() % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let index = flat_index(&dir, &vectors, dim);
    let queries: Vec<f32> = vectors[..256 * dim].to_vec();
    let mut group = c.benchmark_group("dense_exact_search");
    group.throughput(Throughput::Elements(256));
    group.sample_size(20);
    group.bench_function("50k_x128_256_queries_top10", |b| {
        b.iter(|| index.search(black_box(&queries), 10).unwrap())
    });
    group.finish();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `rows` unit vectors of `dim` around `rows / 20` centres: neighbourhoods, as
/// embeddings have (on uniform noise a graph search means nothing).
fn clustered(rng: &mut Rng, rows: usize, dim: usize) -> Vec<f32> {
    let mut uniform = || (rng.next() % 2001) as f32 / 1000.0 - 1.0;
    let centres: Vec<f32> = (0..(rows / 20) * dim).map(|_| uniform()).collect();
    let mut out = Vec::with_capacity(rows * dim);
    for r in 0..rows {
        let c = &centres[(r % (rows / 20)) * dim..][..dim];
        let v: Vec<f32> = c.iter().map(|x| x + 0.5 * uniform()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.extend(v.iter().map(|x| x / norm));
    }
    out
}

fn bench_hnsw(c: &mut Criterion) {
    let dir = scratch("hnsw");
    let (rows, dim) = (20_000usize, 128usize);
    let flat = flat_index(&dir, &clustered(&mut Rng(13), rows, dim), dim);
    let settings = HnswSettings {
        dtype: Quantization::I8,
        connectivity: 16,
        expansion_add: 64,
        expansion_search: 32,
        ..HnswSettings::default()
    };
    HnswIndex::build(&dir, &flat, settings, 2, |_| {}, &AtomicBool::new(false)).unwrap();
    let graph = HnswIndex::open(&dir, settings, &flat).unwrap();
    let queries: Vec<f32> = clustered(&mut Rng(17), 256, dim);
    let mut group = c.benchmark_group("hnsw_search");
    group.throughput(Throughput::Elements(256));
    group.bench_function("20k_x128_i8_walk_ef32_256_queries_top10", |b| {
        b.iter(|| graph.search(black_box(&queries), dim, 10, &flat).unwrap())
    });
    group.finish();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The re-scoring kernels (an f32 query times a stored f32 or i8 row, 384 values) on
/// every instruction set this CPU has: the AVX-512 path next to the AVX2 one.
fn bench_dot_kernels(c: &mut Criterion) {
    let dim = 384;
    let mut rng = Rng(19);
    let mut uniform = || (rng.next() % 2001) as f32 / 1000.0 - 1.0;
    let q: Vec<f32> = (0..dim).map(|_| uniform()).collect();
    let row: Vec<f32> = (0..dim).map(|_| uniform()).collect();
    let f32_bytes: Vec<u8> = row.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut codes = Vec::new();
    quantize_row(&row, &mut codes);
    let i8_bytes: Vec<u8> = codes.iter().map(|&v| v as u8).collect();
    let mut group = c.benchmark_group("dot_384");
    for isa in simd::Isa::available() {
        group.bench_function(format!("f32_row_{isa:?}"), |bench| {
            bench.iter(|| simd::dot_f32_on(isa, black_box(&q), black_box(&f32_bytes)))
        });
        group.bench_function(format!("i8_row_{isa:?}"), |bench| {
            bench.iter(|| simd::dot_i8_on(isa, black_box(&q), black_box(&i8_bytes)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_bm25, bench_dense, bench_hnsw, bench_dot_kernels);
criterion_main!(benches);
