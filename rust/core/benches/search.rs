//! Criterion benches of the retrieval search paths: batched BM25 and exact dense search.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use searchr1_core::bm25::{Bm25Index, Bm25Settings};
use searchr1_core::dense::{DType, DenseSettings, DenseWriter, FlatIndex};
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
    Bm25Index::build(&dir, passages.into_iter(), settings, 2, 64 << 20, |_| {}).unwrap();
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

fn bench_dense(c: &mut Criterion) {
    let dir = scratch("dense");
    let (rows, dim) = (50_000usize, 128usize);
    let mut rng = Rng(11);
    let vectors: Vec<f32> = (0..rows * dim)
        .map(|_| (rng.next() % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let mut writer = DenseWriter::create(&dir, dim, DType::F32).unwrap();
    writer.add(&vectors).unwrap();
    writer.finish().unwrap();
    let settings = DenseSettings {
        dim,
        dtype: DType::F32,
        rows: rows as u64,
        encoder: serde_json::Value::Null,
        hnsw: None,
    };
    let index = FlatIndex::open(&dir, settings).unwrap();
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

criterion_group!(benches, bench_bm25, bench_dense);
criterion_main!(benches);
