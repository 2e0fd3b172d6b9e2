"""The rollout packer: layout, masks, truncation, errors, zero-copy and the GIL."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from searchr1 import PackError, Segment, Trajectory, pack


def test_layout_by_hand() -> None:
    trajs = [
        Trajectory(
            [5, 6],
            [
                Segment([7, 0], True, [-0.5, -0.25]),
                Segment(np.array([8, 9]), False),
                Segment([10], True),
            ],
        ),
        Trajectory(np.array([4, 5, 6]), [Segment([11], True, np.array([-1.0], np.float32))]),
    ]
    out = pack(trajs, pad_id=0)
    assert (out.prompt_len, out.response_len) == (3, 5)
    assert out.input_ids.tolist() == [[0, 5, 6, 7, 0, 8, 9, 10], [4, 5, 6, 11, 0, 0, 0, 0]]
    assert out.attention_mask.tolist() == [[0, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0]]
    assert out.position_ids.tolist() == [[0, 0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 0, 0, 0, 0]]
    # The response token 0 equals the pad id and is still a real, sampled token.
    assert out.loss_mask.tolist() == [[1, 1, 0, 0, 1], [1, 0, 0, 0, 0]]
    assert out.old_logprobs.tolist() == [[-0.5, -0.25, 0, 0, 0], [-1, 0, 0, 0, 0]]
    assert out.last_index.tolist() == [4, 0]
    assert out.truncated.tolist() == [False, False]
    assert out.responses.tolist() == [[7, 0, 8, 9, 10], [11, 0, 0, 0, 0]]
    assert out.input_ids.dtype == np.int64 and out.loss_mask.dtype == np.float32


def test_truncation_and_fixed_sizes() -> None:
    traj = Trajectory([1], [Segment([2, 3], True), Segment([4, 5], False)])
    out = pack([traj], max_prompt_len=2, max_response_len=3, pad_id=9)
    assert out.input_ids.tolist() == [[9, 1, 2, 3, 4]]
    assert out.loss_mask.tolist() == [[1, 1, 0]]
    assert out.truncated.tolist() == [True]
    assert out.last_index.tolist() == [1]  # the kept injected token was not sampled


def test_last_index_is_the_last_sampled_token() -> None:
    ends_in_observation = Trajectory([1], [Segment([2, 3], True), Segment([4, 5, 6], False)])
    out = pack([ends_in_observation])
    assert out.loss_mask.tolist() == [[1, 1, 0, 0, 0]]
    assert out.last_index.tolist() == [1]


def test_last_index_when_the_only_sampled_segment_is_cut() -> None:
    cut = Trajectory([1], [Segment([4, 5], False), Segment([6, 7], True)])
    out = pack([cut, Trajectory([1])], max_response_len=2)
    assert out.loss_mask.tolist() == [[0, 0], [0, 0]]
    assert out.last_index.tolist() == [-1, -1]
    assert out.truncated.tolist() == [True, False]


def test_errors_name_the_place() -> None:
    with pytest.raises(PackError, match="trajectory 1: the prompt has 3 tokens, more than"):
        pack([Trajectory([1]), Trajectory([1, 2, 3])], max_prompt_len=2)
    with pytest.raises(PackError, match="trajectory 0, segment 1: 2 token ids but 1 log-probs"):
        pack([Trajectory([1], [Segment([1], True), Segment([2, 3], True, [0.0])])])
    with pytest.raises(PackError, match="segment 0: token id -4 at position 1 is negative"):
        pack([Trajectory([1], [Segment([2, -4], False)])])
    with pytest.raises(TypeError, match="trajectory 0, segment 0: ids must be"):
        pack([Trajectory([1], [Segment("abc", True)])])  # type: ignore[arg-type]
    with pytest.raises(AttributeError, match="prompt_ids"):
        pack([object()])
    assert isinstance(PackError("x"), ValueError)


def test_empty_batch() -> None:
    out = pack([])
    assert out.input_ids.shape == (0, 0) and out.loss_mask.shape == (0, 0)


def test_torch_shares_memory() -> None:
    torch = pytest.importorskip("torch")
    out = pack([Trajectory([1, 2], [Segment([3], True)])])
    tensors = out.to_torch()
    assert tensors["input_ids"].dtype == torch.int64
    tensors["input_ids"][0, 0] = 42
    assert out.input_ids[0, 0] == 42


SEGMENT = st.builds(
    lambda ids, generated, with_lp: Segment(
        ids, generated, [-i / 8 for i in ids] if with_lp else None
    ),
    st.lists(st.integers(0, 40), max_size=6),
    st.booleans(),
    st.booleans(),
)
TRAJECTORY = st.builds(
    Trajectory, st.lists(st.integers(0, 40), max_size=6), st.lists(SEGMENT, max_size=5)
)


@given(st.lists(TRAJECTORY, max_size=6), st.integers(0, 16), st.integers(0, 2))
def test_matches_python_reference(trajs: list[Trajectory], r: int, pad: int) -> None:
    out = pack(trajs, max_prompt_len=6, max_response_len=r, pad_id=pad)
    for b, t in enumerate(trajs):
        tokens = [
            (i, s.generated, (s.logprobs[j] if s.logprobs and s.generated else 0.0))
            for s in t.segments
            for j, i in enumerate(s.ids)
        ]
        kept = tokens[:r]
        prompt = list(t.prompt_ids)
        ids = [pad] * (6 - len(prompt)) + prompt + [i for i, _, _ in kept]
        ids += [pad] * (6 + r - len(ids))
        att = [0] * (6 - len(prompt)) + [1] * (len(prompt) + len(kept))
        att += [0] * (6 + r - len(att))
        pos = [0] * (6 - len(prompt)) + list(range(len(prompt) + len(kept)))
        pos += [0] * (6 + r - len(pos))
        assert out.input_ids[b].tolist() == ids
        assert out.attention_mask[b].tolist() == att
        assert out.position_ids[b].tolist() == pos
        mask = [float(g) for _, g, _ in kept] + [0.0] * (r - len(kept))
        assert out.loss_mask[b].tolist() == mask
        lps = [lp for _, _, lp in kept] + [0.0] * (r - len(kept))
        assert out.old_logprobs[b].tolist() == pytest.approx(lps)
        sampled = [c for c, (_, g, _) in enumerate(kept) if g]
        assert out.last_index[b] == (sampled[-1] if sampled else -1)
        assert out.truncated[b] == (len(tokens) > r)


def test_releases_the_gil() -> None:
    """While a large batch packs, another Python thread keeps running."""
    rng = np.random.default_rng(0)
    trajs = [
        Trajectory(
            rng.integers(0, 1000, 1024),
            [Segment(rng.integers(0, 1000, 512), k % 2 == 0) for k in range(8)],
        )
        for _ in range(256)
    ]
    window: dict[str, float] = {}

    def work() -> None:
        window["start"] = time.perf_counter()
        for _ in range(3):
            pack(trajs)
        window["end"] = time.perf_counter()

    ticks: list[float] = []
    thread = threading.Thread(target=work)
    thread.start()
    while thread.is_alive():
        ticks.append(time.perf_counter())
    thread.join()
    span = window["end"] - window["start"]
    inside = [t for t in ticks if window["start"] + 0.1 * span < t < window["end"] - 0.1 * span]
    assert len(inside) > 1000, f"only {len(inside)} ticks in {span:.3f}s: the GIL was held"


def test_reused_memory_never_aliases_live_arrays() -> None:
    """Output memory is recycled only once numpy has let go of every view of it."""

    def batch(seed: int) -> list[Trajectory]:
        r = np.random.default_rng(seed)
        return [
            Trajectory(
                r.integers(1, 99, 300),
                [Segment(r.integers(1, 99, 700), k % 2 == 0) for k in range(4)],
            )
            for _ in range(64)
        ]

    first, second = batch(1), batch(2)
    expected = pack(first).input_ids.copy()
    a = pack(first)
    view = a.loss_mask[1:]
    ids = a.input_ids
    del a
    b = pack(second)
    assert not np.shares_memory(view, b.loss_mask)
    assert not np.shares_memory(ids, b.input_ids)
    assert np.array_equal(ids, expected)
    del ids, view, b
    for _ in range(3):
        assert np.array_equal(pack(first).input_ids, expected)
