//! Criterion benches of tag scanning and token-level stop checking.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use searchr1_core::{parse_action, StopScanner, TokenStopChecker};

mod common;
use common::Rng;

/// A synthetic byte-level vocabulary: all single bytes, then random 2-8 byte pieces of
/// text, with the pieces of the stop strings among them.
fn vocab(size: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let letters = b"abcdefghijklmnopqrstuvwxyz <>/\n";
    let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    for piece in ["</", "search", ">", "answer", "</search>", ">\n\n"] {
        vocab.push(piece.as_bytes().to_vec());
    }
    while vocab.len() < size {
        let len = 2 + (rng.next() % 7) as usize;
        vocab.push(
            (0..len)
                .map(|_| letters[(rng.next() % letters.len() as u64) as usize])
                .collect(),
        );
    }
    vocab
}

fn bench_parse(c: &mut Criterion) {
    let turn = format!(
        "<think>{}</think>\n<search> who founded the city of {} </search>",
        "I need to find out more about this. ".repeat(12),
        "Riverton"
    );
    let mut group = c.benchmark_group("parse_action");
    group.throughput(Throughput::Bytes(turn.len() as u64));
    group.bench_function("turn_500b", |b| b.iter(|| parse_action(black_box(&turn))));
    group.finish();
}

fn bench_scanner(c: &mut Criterion) {
    let text = format!("{}</answer>", "reasoning about the question at hand ".repeat(50));
    let chunks: Vec<&str> = text
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let mut group = c.benchmark_group("stop_scanner");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("chunks_of_4", |b| {
        b.iter(|| {
            let mut s = StopScanner::new(&["</search>", "</answer>"]).unwrap();
            let mut found = None;
            for chunk in &chunks {
                found = s.feed(black_box(chunk));
            }
            found
        })
    });
    group.finish();
}

fn bench_token_checker(c: &mut Criterion) {
    let vocab = vocab(150_000);
    let batch = 256;
    let steps = 64;
    let mut rng = Rng(42);
    // Random tokens, avoiding the stop-string pieces so that every sequence runs on.
    let ids: Vec<i64> = (0..batch * steps)
        .map(|_| (262 + rng.next() % (vocab.len() as u64 - 262)) as i64)
        .collect();
    let mut checker = TokenStopChecker::new(&vocab, &["</search>", "</answer>"]).unwrap();
    let mut out = vec![0i32; batch];
    let mut group = c.benchmark_group("token_stop_checker");
    group.throughput(Throughput::Elements((batch * steps) as u64));
    group.bench_function("batch256_x64_steps", |b| {
        b.iter(|| {
            checker.reset(batch);
            for step in ids.chunks(batch) {
                checker.step(black_box(step), None, &mut out).unwrap();
            }
            out[0]
        })
    });
    group.finish();
}

criterion_group!(benches, bench_parse, bench_scanner, bench_token_checker);
criterion_main!(benches);
