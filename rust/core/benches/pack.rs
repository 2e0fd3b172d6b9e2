//! Criterion bench of packing multi-turn rollouts into batch arrays.

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use searchr1_core::{pack_into, PackBuffers, PackConfig, Segment, Trajectory};

/// `batch` trajectories of `turns` turns, each turn a generated segment then an injected
/// observation, with lengths varying by row so that padding differs.
fn rollouts(batch: usize, turns: usize, prompt: usize, response: usize) -> Vec<Trajectory<'static>> {
    (0..batch)
        .map(|b| {
            let prompt_len = prompt / 2 + (b * 37) % (prompt / 2);
            let per_turn = response / (2 * turns);
            let segments = (0..2 * turns)
                .map(|s| {
                    let len = per_turn / 2 + ((b + s) * 53) % per_turn;
                    let ids: Vec<i64> = (0..len)
                        .map(|i| ((b * 7 + s * 11 + i) % 150_000) as i64)
                        .collect();
                    let generated = s % 2 == 0;
                    Segment {
                        logprobs: generated.then(|| Cow::Owned(vec![-1.5f32; len])),
                        ids: Cow::Owned(ids),
                        generated,
                    }
                })
                .collect();
            Trajectory {
                prompt: Cow::Owned((0..prompt_len as i64).collect()),
                segments,
            }
        })
        .collect()
}

fn bench_pack(c: &mut Criterion) {
    let mut group = c.benchmark_group("pack");
    // A small batch, and the shape of the side-by-side benchmark (benches/bench_pack.py).
    for (batch, prompt, response) in [(64, 512, 1024), (512, 2048, 4096)] {
        let trajs = rollouts(batch, 4, prompt, response);
        let config = PackConfig {
            max_prompt_len: Some(prompt),
            max_response_len: Some(response),
            pad_id: 0,
        };
        group.throughput(Throughput::Elements((batch * (prompt + response)) as u64));
        if batch > 64 {
            group.sample_size(10);
        }
        let name = format!("b{batch}_p{prompt}_r{response}_4turns");
        // Writing into the previous batch's memory, as the Python binding does through
        // its pool: fresh memory would measure the kernel's page faults instead.
        let mut spare = PackBuffers::default();
        group.bench_function(name, |b| {
            b.iter(|| {
                let out = pack_into(black_box(&trajs), &config, std::mem::take(&mut spare)).unwrap();
                spare = out.into_buffers();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_pack);
criterion_main!(benches);
