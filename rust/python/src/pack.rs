//! `pack_trajectories`: rollouts into numpy arrays, packed with the GIL released.

use std::borrow::Cow;

use numpy::IntoPyArray;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use searchr1_core as core;

use crate::arrays::Values;
use crate::errors::Result;
use crate::pool;

/// One segment's inputs, held while the packing borrows them.
struct SegmentInput<'py> {
    ids: Values<'py, i64>,
    generated: bool,
    logprobs: Option<Values<'py, f32>>,
}

/// Packs trajectories (objects with `prompt_ids` and `segments`, each segment with
/// `ids`, `generated` and `logprobs`) into a dict of numpy arrays.
#[pyfunction]
#[pyo3(signature = (trajectories, max_prompt_len = None, max_response_len = None, pad_id = 0))]
pub(crate) fn pack_trajectories<'py>(
    py: Python<'py>,
    trajectories: &Bound<'py, PyAny>,
    max_prompt_len: Option<usize>,
    max_response_len: Option<usize>,
    pad_id: i64,
) -> Result<Bound<'py, PyDict>> {
    let mut inputs: Vec<(Values<'py, i64>, Vec<SegmentInput<'py>>)> = Vec::new();
    for (t, traj) in trajectories.try_iter()?.enumerate() {
        let traj = traj?;
        let where_ = |s: Option<usize>, what: &str| match s {
            Some(s) => format!("trajectory {t}, segment {s}: {what}"),
            None => format!("trajectory {t}: {what}"),
        };
        let prompt = Values::extract(&traj.getattr(intern!(py, "prompt_ids"))?, || {
            where_(None, "prompt_ids")
        })?;
        let mut segments = Vec::new();
        for (s, seg) in traj.getattr(intern!(py, "segments"))?.try_iter()?.enumerate() {
            let seg = seg?;
            let ids = Values::extract(&seg.getattr(intern!(py, "ids"))?, || where_(Some(s), "ids"))?;
            let generated: bool = seg.getattr(intern!(py, "generated"))?.extract()?;
            let lp = seg.getattr(intern!(py, "logprobs"))?;
            let logprobs = if lp.is_none() {
                None
            } else {
                Some(Values::extract(&lp, || where_(Some(s), "logprobs"))?)
            };
            segments.push(SegmentInput {
                ids,
                generated,
                logprobs,
            });
        }
        inputs.push((prompt, segments));
    }
    let trajs: Vec<core::Trajectory<'_>> = inputs
        .iter()
        .map(|(prompt, segments)| core::Trajectory {
            prompt: Cow::Borrowed(prompt.as_slice()),
            segments: segments
                .iter()
                .map(|s| core::Segment {
                    ids: Cow::Borrowed(s.ids.as_slice()),
                    generated: s.generated,
                    logprobs: s.logprobs.as_ref().map(|l| Cow::Borrowed(l.as_slice())),
                })
                .collect(),
        })
        .collect();
    let config = core::PackConfig {
        max_prompt_len,
        max_response_len,
        pad_id,
    };
    let (b, (p, r)) = (trajs.len(), config.columns(&trajs));
    let buffers = core::PackBuffers {
        input_ids: pool::take(b * (p + r)),
        attention_mask: pool::take(b * (p + r)),
        position_ids: pool::take(b * (p + r)),
        loss_mask: pool::take(b * r),
        old_logprobs: pool::take(b * r),
    };
    let packed = py.detach(|| core::pack_into(&trajs, &config, buffers))?;
    let l = packed.prompt_len + packed.response_len;
    let out = PyDict::new(py);
    out.set_item("input_ids", pool::array2(py, packed.input_ids, b, l)?)?;
    out.set_item("attention_mask", pool::array2(py, packed.attention_mask, b, l)?)?;
    out.set_item("position_ids", pool::array2(py, packed.position_ids, b, l)?)?;
    out.set_item("loss_mask", pool::array2(py, packed.loss_mask, b, r)?)?;
    out.set_item("old_logprobs", pool::array2(py, packed.old_logprobs, b, r)?)?;
    out.set_item("last_index", packed.last_index.into_pyarray(py))?;
    out.set_item("truncated", packed.truncated.into_pyarray(py))?;
    out.set_item("prompt_len", packed.prompt_len)?;
    out.set_item("response_len", packed.response_len)?;
    Ok(out)
}
