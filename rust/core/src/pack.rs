//! Packing multi-turn rollouts into the batch arrays a trainer consumes.
//!
//! A trajectory is a prompt plus ordered segments of response tokens; each segment was
//! either sampled by the model (it gets loss, and may carry the log-probs the engine
//! reported) or injected by the environment (retrieved documents, the invalid-action
//! message), which must never get loss. Layout, for a batch of `B` trajectories packed
//! to `P` prompt and `R` response positions (row-major, `L = P + R`):
//!
//! * `input_ids`, `attention_mask`, `position_ids`: `[B, L]`; the prompt is
//!   left-padded into the first `P` columns, the response right-padded after it.
//!   Position ids count real tokens from 0 and are 0 on padding.
//! * `loss_mask`, `old_logprobs`: `[B, R]`, over the response only; the mask is 1 on
//!   tokens the model sampled and 0 on injected tokens and padding.
//! * `last_index`: `[B]`, the response column of the last token the policy sampled
//!   (the last with loss mask 1; -1 if none), where an outcome reward goes: a response
//!   that ends in an observation is scored on the action that asked for it.
//! * `truncated`: `[B]`, whether the response was cut to fit `R`.
//!
//! Masks come from the segment flags alone: a real token whose id equals the padding id
//! is still a real token.
//!
//! Truncation rules: a prompt longer than `P` is an error (cutting a question silently
//! changes the task); a response longer than `R` keeps its first `R` tokens and is
//! flagged `truncated`.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::error::PackError;

/// A run of response tokens from one source.
#[derive(Debug, Clone)]
pub struct Segment<'a> {
    pub ids: Cow<'a, [i64]>,
    /// True when the model sampled these tokens; false when the environment injected them.
    pub generated: bool,
    /// The log-prob of each token under the sampling policy, when the engine gave them.
    pub logprobs: Option<Cow<'a, [f32]>>,
}

/// A prompt and the response segments that followed it, in order.
#[derive(Debug, Clone)]
pub struct Trajectory<'a> {
    pub prompt: Cow<'a, [i64]>,
    pub segments: Vec<Segment<'a>>,
}

impl Trajectory<'_> {
    /// Total response tokens over all segments.
    pub fn response_len(&self) -> usize {
        self.segments.iter().map(|s| s.ids.len()).sum()
    }
}

/// Sizes and padding of the packed arrays.
#[derive(Debug, Clone, Copy, Default)]
pub struct PackConfig {
    /// Prompt columns `P`; the longest prompt of the batch when `None`.
    pub max_prompt_len: Option<usize>,
    /// Response columns `R`; the longest response of the batch when `None`.
    pub max_response_len: Option<usize>,
    /// The token id written into padding positions of `input_ids`.
    pub pad_id: i64,
}

impl PackConfig {
    /// The prompt and response columns `(P, R)` for `trajectories`.
    pub fn columns(&self, trajectories: &[Trajectory<'_>]) -> (usize, usize) {
        let longest = |f: fn(&Trajectory<'_>) -> usize| trajectories.iter().map(f).max().unwrap_or(0);
        let p = self.max_prompt_len.unwrap_or_else(|| longest(|t| t.prompt.len()));
        let r = self
            .max_response_len
            .unwrap_or_else(|| longest(|t| t.response_len()));
        (p, r)
    }
}

/// The packed arrays, row-major; see the module documentation for their layout.
#[derive(Debug, Clone, Default)]
pub struct PackedBatch {
    pub batch_size: usize,
    pub prompt_len: usize,
    pub response_len: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub position_ids: Vec<i64>,
    pub loss_mask: Vec<f32>,
    pub old_logprobs: Vec<f32>,
    pub last_index: Vec<i64>,
    pub truncated: Vec<bool>,
}

impl PackedBatch {
    /// The arrays' memory, for the next [`pack_into`] to write into.
    pub fn into_buffers(self) -> PackBuffers {
        PackBuffers {
            input_ids: self.input_ids,
            attention_mask: self.attention_mask,
            position_ids: self.position_ids,
            loss_mask: self.loss_mask,
            old_logprobs: self.old_logprobs,
        }
    }
}

/// One row of every output array.
struct RowOut<'o> {
    ids: &'o mut [MaybeUninit<i64>],
    attention: &'o mut [MaybeUninit<i64>],
    positions: &'o mut [MaybeUninit<i64>],
    loss: &'o mut [MaybeUninit<f32>],
    logprobs: &'o mut [MaybeUninit<f32>],
}

/// Packs `trajectories` into batch arrays, in parallel over rows.
pub fn pack(trajectories: &[Trajectory<'_>], config: &PackConfig) -> Result<PackedBatch, PackError> {
    pack_into(trajectories, config, PackBuffers::default())
}

/// Vectors whose memory [`pack_into`] may reuse for its output (their contents are
/// discarded). Memory that is already mapped is written without page faults, which
/// otherwise cost more than the packing itself for large batches.
#[derive(Debug, Default)]
pub struct PackBuffers {
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub position_ids: Vec<i64>,
    pub loss_mask: Vec<f32>,
    pub old_logprobs: Vec<f32>,
}

/// [`pack`], writing into the memory of `buffers`.
pub fn pack_into(
    trajectories: &[Trajectory<'_>],
    config: &PackConfig,
    buffers: PackBuffers,
) -> Result<PackedBatch, PackError> {
    let b = trajectories.len();
    let (p, r) = config.columns(trajectories);
    for (t, traj) in trajectories.iter().enumerate() {
        check_trajectory(t, traj, p)?;
    }
    let l = p + r;
    // Every element of every row is written exactly once below, so the buffers start
    // uninitialised: zeroing them first would double the memory traffic.
    let mut input_ids = output_buffer(buffers.input_ids, b * l);
    let mut attention_mask = output_buffer(buffers.attention_mask, b * l);
    let mut position_ids = output_buffer(buffers.position_ids, b * l);
    let mut loss_mask = output_buffer(buffers.loss_mask, b * r);
    let mut old_logprobs = output_buffer(buffers.old_logprobs, b * r);
    let rows: Vec<RowOut<'_>> = rows_of(&mut input_ids.spare_capacity_mut()[..b * l], l, b)
        .into_iter()
        .zip(rows_of(&mut attention_mask.spare_capacity_mut()[..b * l], l, b))
        .zip(rows_of(&mut position_ids.spare_capacity_mut()[..b * l], l, b))
        .zip(rows_of(&mut loss_mask.spare_capacity_mut()[..b * r], r, b))
        .zip(rows_of(&mut old_logprobs.spare_capacity_mut()[..b * r], r, b))
        .map(|((((ids, attention), positions), loss), logprobs)| RowOut {
            ids,
            attention,
            positions,
            loss,
            logprobs,
        })
        .collect();
    let results: Vec<Result<(i64, bool), PackError>> = rows
        .into_par_iter()
        .zip(trajectories.par_iter())
        .enumerate()
        .with_min_len(8)
        .map(|(t, (row, traj))| fill_row(t, traj, p, r, config.pad_id, row))
        .collect();
    let mut last_index = Vec::with_capacity(b);
    let mut truncated = Vec::with_capacity(b);
    for result in results {
        let (last, cut) = result?;
        last_index.push(last);
        truncated.push(cut);
    }
    // SAFETY: every row succeeded, and a successful `fill_row` initialises every element
    // of its row; the rows tile the buffers exactly.
    unsafe {
        input_ids.set_len(b * l);
        attention_mask.set_len(b * l);
        position_ids.set_len(b * l);
        loss_mask.set_len(b * r);
        old_logprobs.set_len(b * r);
    }
    Ok(PackedBatch {
        batch_size: b,
        prompt_len: p,
        response_len: r,
        input_ids,
        attention_mask,
        position_ids,
        loss_mask,
        old_logprobs,
        last_index,
        truncated,
    })
}

/// `v` emptied, with room for `n` elements of output that is about to be written.
/// Large new allocations ask the kernel for transparent huge pages first (as numpy
/// does): writing fresh memory then costs a page fault per 2 MiB instead of per 4 KiB.
fn output_buffer<T>(mut v: Vec<T>, n: usize) -> Vec<T> {
    v.clear();
    if v.capacity() >= n {
        return v;
    }
    drop(v);
    let v = Vec::with_capacity(n);
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = n * std::mem::size_of::<T>();
        if bytes >= 2 * HUGE {
            let start = v.as_ptr() as usize;
            let aligned = (start + HUGE - 1) & !(HUGE - 1);
            let len = (start + bytes - aligned) & !(HUGE - 1);
            // SAFETY: the range lies inside the vector's allocation; MADV_HUGEPAGE only
            // changes how the kernel backs the pages, never their contents.
            unsafe {
                libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
            }
        }
    }
    v
}

/// `buf` split into `b` rows of `cols` values (empty rows when `cols` is 0).
fn rows_of<T>(buf: &mut [T], cols: usize, b: usize) -> Vec<&mut [T]> {
    if cols == 0 {
        (0..b).map(|_| <&mut [T]>::default()).collect()
    } else {
        buf.chunks_mut(cols).collect()
    }
}

/// The checks that need no pass over the tokens: prompt length and log-prob lengths.
fn check_trajectory(t: usize, traj: &Trajectory<'_>, p: usize) -> Result<(), PackError> {
    if traj.prompt.len() > p {
        return Err(PackError::PromptTooLong {
            trajectory: t,
            len: traj.prompt.len(),
            max: p,
        });
    }
    for (s, seg) in traj.segments.iter().enumerate() {
        if let Some(lp) = &seg.logprobs {
            if lp.len() != seg.ids.len() {
                return Err(PackError::LogprobLength {
                    trajectory: t,
                    segment: s,
                    ids: seg.ids.len(),
                    logprobs: lp.len(),
                });
            }
        }
    }
    Ok(())
}

fn check_ids(t: usize, place: impl FnOnce() -> String, ids: &[i64]) -> Result<(), PackError> {
    if ids.iter().any(|&id| id < 0) {
        let position = ids.iter().position(|&id| id < 0).unwrap_or(0);
        return Err(PackError::NegativeTokenId {
            trajectory: t,
            place: place(),
            position,
            id: ids[position],
        });
    }
    Ok(())
}

/// Writes `value` into every element of `dst`.
#[inline]
fn fill<T: Copy>(dst: &mut [MaybeUninit<T>], value: T) {
    for d in dst {
        d.write(value);
    }
}

/// Copies `src` into `dst` (of the same length).
#[inline]
fn copy<T: Copy>(dst: &mut [MaybeUninit<T>], src: &[T]) {
    debug_assert_eq!(dst.len(), src.len());
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

/// Writes `first, first + 1, …` into `dst`.
#[inline]
fn ramp(dst: &mut [MaybeUninit<i64>], first: i64) {
    for (d, value) in dst.iter_mut().zip(first..) {
        d.write(value);
    }
}

/// Writes one trajectory into its row, every element of it; returns (response column
/// of the last sampled token or -1, truncated).
fn fill_row(
    t: usize,
    traj: &Trajectory<'_>,
    p: usize,
    r: usize,
    pad_id: i64,
    row: RowOut<'_>,
) -> Result<(i64, bool), PackError> {
    let prompt = &traj.prompt[..];
    check_ids(t, || "prompt".to_owned(), prompt)?;
    let start = p - prompt.len();
    fill(&mut row.ids[..start], pad_id);
    fill(&mut row.attention[..start], 0);
    fill(&mut row.positions[..start], 0);
    copy(&mut row.ids[start..p], prompt);
    fill(&mut row.attention[start..p], 1);
    ramp(&mut row.positions[start..p], 0);
    let mut cursor = 0usize;
    let mut last_sampled = -1i64;
    let mut truncated = false;
    for (s, seg) in traj.segments.iter().enumerate() {
        let take = seg.ids.len().min(r - cursor);
        let ids = &seg.ids[..take];
        check_ids(t, || format!("segment {s}"), ids)?;
        let span = p + cursor..p + cursor + take;
        copy(&mut row.ids[span.clone()], ids);
        fill(&mut row.attention[span.clone()], 1);
        ramp(&mut row.positions[span], (prompt.len() + cursor) as i64);
        let response = cursor..cursor + take;
        fill(
            &mut row.loss[response.clone()],
            if seg.generated { 1.0 } else { 0.0 },
        );
        match &seg.logprobs {
            Some(lp) if seg.generated => copy(&mut row.logprobs[response], &lp[..take]),
            _ => fill(&mut row.logprobs[response], 0.0),
        }
        cursor += take;
        if seg.generated && take > 0 {
            last_sampled = cursor as i64 - 1;
        }
        if take < seg.ids.len() {
            truncated = true;
            break;
        }
    }
    fill(&mut row.ids[p + cursor..], pad_id);
    fill(&mut row.attention[p + cursor..], 0);
    fill(&mut row.positions[p + cursor..], 0);
    fill(&mut row.loss[cursor..], 0.0);
    fill(&mut row.logprobs[cursor..], 0.0);
    Ok((last_sampled, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seg(ids: &[i64], generated: bool, logprobs: Option<&[f32]>) -> Segment<'static> {
        Segment {
            ids: Cow::Owned(ids.to_vec()),
            generated,
            logprobs: logprobs.map(|l| Cow::Owned(l.to_vec())),
        }
    }

    fn traj(prompt: &[i64], segments: Vec<Segment<'static>>) -> Trajectory<'static> {
        Trajectory {
            prompt: Cow::Owned(prompt.to_vec()),
            segments,
        }
    }

    #[test]
    fn layout_by_hand() {
        let trajs = vec![
            traj(
                &[5, 6],
                vec![
                    seg(&[7, 0], true, Some(&[-0.5, -0.25])),
                    seg(&[8, 9], false, None),
                    seg(&[10], true, None),
                ],
            ),
            traj(&[4, 5, 6], vec![seg(&[11], true, Some(&[-1.0]))]),
        ];
        let cfg = PackConfig {
            pad_id: 0,
            ..Default::default()
        };
        let out = pack(&trajs, &cfg).unwrap();
        assert_eq!((out.prompt_len, out.response_len), (3, 5));
        #[rustfmt::skip]
        assert_eq!(out.input_ids, [
            0, 5, 6, 7, 0, 8, 9, 10,
            4, 5, 6, 11, 0, 0, 0, 0,
        ]);
        #[rustfmt::skip]
        assert_eq!(out.attention_mask, [
            0, 1, 1, 1, 1, 1, 1, 1,
            1, 1, 1, 1, 0, 0, 0, 0,
        ]);
        #[rustfmt::skip]
        assert_eq!(out.position_ids, [
            0, 0, 1, 2, 3, 4, 5, 6,
            0, 1, 2, 3, 0, 0, 0, 0,
        ]);
        // Token 0 in the response is real and sampled, though it equals the pad id.
        assert_eq!(out.loss_mask, [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(
            out.old_logprobs,
            [-0.5, -0.25, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(out.last_index, [4, 0]);
        assert_eq!(out.truncated, [false, false]);
    }

    #[test]
    fn truncation_and_errors() {
        let trajs = vec![traj(
            &[1],
            vec![seg(&[2, 3], true, None), seg(&[4, 5], false, None)],
        )];
        let cfg = PackConfig {
            max_prompt_len: Some(2),
            max_response_len: Some(3),
            pad_id: -1,
        };
        let out = pack(&trajs, &cfg).unwrap();
        assert_eq!(out.input_ids, [-1, 1, 2, 3, 4]);
        assert_eq!(out.loss_mask, [1.0, 1.0, 0.0]);
        assert_eq!(out.last_index, [1], "the kept injected token is not sampled");
        assert_eq!(out.truncated, [true]);

        let too_long = PackConfig {
            max_prompt_len: Some(0),
            ..cfg
        };
        assert!(matches!(
            pack(&trajs, &too_long),
            Err(PackError::PromptTooLong {
                trajectory: 0,
                len: 1,
                max: 0
            })
        ));
        let bad_lp = vec![traj(&[1], vec![seg(&[2, 3], true, Some(&[0.0]))])];
        assert!(matches!(
            pack(&bad_lp, &cfg),
            Err(PackError::LogprobLength {
                segment: 0,
                ids: 2,
                logprobs: 1,
                ..
            })
        ));
        let negative = vec![traj(
            &[1],
            vec![seg(&[2], true, None), seg(&[3, -7], false, None)],
        )];
        let err = pack(&negative, &cfg).unwrap_err();
        assert_eq!(
            err.to_string(),
            "trajectory 0, segment 1: token id -7 at position 1 is negative"
        );
    }

    #[test]
    fn the_outcome_goes_on_the_last_sampled_token() {
        let trajs = vec![
            // Ends in an observation: the reward goes on the action before it.
            traj(&[1], vec![seg(&[2, 3], true, None), seg(&[4, 5, 6], false, None)]),
            // The only sampled segment is cut away: nothing to put the reward on.
            traj(&[1], vec![seg(&[4, 5], false, None), seg(&[6, 7], true, None)]),
            // Nothing at all.
            traj(&[1], vec![]),
        ];
        let cfg = PackConfig {
            max_response_len: Some(2),
            ..Default::default()
        };
        let out = pack(&trajs, &cfg).unwrap();
        assert_eq!(out.loss_mask, [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(out.last_index, [1, -1, -1]);
        assert_eq!(out.truncated, [true, true, false]);
        let whole = pack(&trajs[..1], &PackConfig::default()).unwrap();
        assert_eq!(whole.last_index, [1]);
    }

    #[test]
    fn reused_buffers_are_fully_overwritten() {
        let trajs = vec![
            traj(&[1, 2], vec![seg(&[3], true, None), seg(&[4, 5], false, None)]),
            traj(&[6], vec![seg(&[7], true, Some(&[-0.5]))]),
        ];
        let cfg = PackConfig::default();
        let fresh = pack(&trajs, &cfg).unwrap();
        let dirty = PackBuffers {
            input_ids: vec![99; 64],
            attention_mask: vec![99; 64],
            position_ids: vec![99; 3],
            loss_mask: vec![9.0; 64],
            old_logprobs: vec![9.0; 64],
        };
        let reused = pack_into(&trajs, &cfg, dirty).unwrap();
        assert_eq!(reused.input_ids, fresh.input_ids);
        assert_eq!(reused.attention_mask, fresh.attention_mask);
        assert_eq!(reused.position_ids, fresh.position_ids);
        assert_eq!(reused.loss_mask, fresh.loss_mask);
        assert_eq!(reused.old_logprobs, fresh.old_logprobs);
    }

    #[test]
    fn empty_batch() {
        let out = pack(&[], &PackConfig::default()).unwrap();
        assert_eq!(out.batch_size, 0);
        assert!(out.input_ids.is_empty());
    }

    fn arb_traj() -> impl Strategy<Value = Trajectory<'static>> {
        let segment = (
            proptest::collection::vec(0i64..50, 0..6),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(ids, generated, with_lp)| {
                let lp: Vec<f32> = ids.iter().map(|&i| -(i as f32) / 10.0).collect();
                Segment {
                    ids: Cow::Owned(ids),
                    generated,
                    logprobs: with_lp.then_some(Cow::Owned(lp)),
                }
            });
        (
            proptest::collection::vec(0i64..50, 0..6),
            proptest::collection::vec(segment, 0..5),
        )
            .prop_map(|(prompt, segments)| Trajectory {
                prompt: Cow::Owned(prompt),
                segments,
            })
    }

    proptest! {
        /// Packing equals a token-by-token reference built from the same flags.
        #[test]
        fn matches_naive(trajs in proptest::collection::vec(arb_traj(), 0..6), r in 0usize..20, pad in 0i64..3) {
            let cfg = PackConfig { max_prompt_len: Some(6), max_response_len: Some(r), pad_id: pad };
            let out = pack(&trajs, &cfg).unwrap();
            let l = 6 + r;
            for (t, traj) in trajs.iter().enumerate() {
                // (id, generated, logprob) per response token, before truncation.
                let tokens: Vec<(i64, bool, f32)> = traj.segments.iter().flat_map(|s| {
                    s.ids.iter().enumerate().map(move |(j, &id)| {
                        (id, s.generated, if s.generated { s.logprobs.as_ref().map_or(0.0, |lp| lp[j]) } else { 0.0 })
                    })
                }).collect();
                let n = tokens.len().min(r);
                let row = &out.input_ids[t * l..(t + 1) * l];
                let pl = traj.prompt.len();
                for c in 0..l {
                    let (id, att, pos) = if c < 6 {
                        if c < 6 - pl { (pad, 0, 0) } else { (traj.prompt[c - (6 - pl)], 1, (c - (6 - pl)) as i64) }
                    } else if c - 6 < n {
                        (tokens[c - 6].0, 1, (pl + c - 6) as i64)
                    } else {
                        (pad, 0, 0)
                    };
                    prop_assert_eq!(row[c], id);
                    prop_assert_eq!(out.attention_mask[t * l + c], att);
                    prop_assert_eq!(out.position_ids[t * l + c], pos);
                }
                let expected = tokens.iter().map(|&(_, g, lp)| (g as i32 as f32, lp)).chain(std::iter::repeat((0.0, 0.0)));
                for (c, (mask, lp)) in expected.take(r).enumerate() {
                    prop_assert_eq!(out.loss_mask[t * r + c], mask);
                    prop_assert_eq!(out.old_logprobs[t * r + c], lp);
                }
                let last = tokens[..n].iter().rposition(|&(_, g, _)| g).map_or(-1, |c| c as i64);
                prop_assert_eq!(out.last_index[t], last);
                prop_assert_eq!(out.truncated[t], tokens.len() > r);
            }
        }
    }
}
