"""Loss aggregation, GSPO and CISPO against hand-computed values; aggregation that adds up
over the parts of a batch (micro-batches, ranks) to the whole."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from searchr1.config import RLConfig
from searchr1.rl import (
    LOSS_AGGS,
    POLICY_LOSSES,
    LossScale,
    agg_loss,
    cispo_policy_loss,
    gspo_policy_loss,
    ppo_policy_loss,
)


def f64(x: object) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


LOSSES = f64([[1.0, 2.0, 3.0, 99.0], [4.0, 99.0, 99.0, 99.0], [99.0, 99.0, 99.0, 99.0]])
MASK = f64([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])  # the last row has no action


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", (1 + 2 + 3 + 4) / 4),
        ("seq-mean-token-sum", ((1 + 2 + 3) + 4) / 2),
        ("seq-mean-token-mean", ((1 + 2 + 3) / 3 + 4 / 1) / 2),
        ("seq-mean-token-sum-norm", ((1 + 2 + 3) + 4) / (2 * 4)),  # L = T = 4
    ],
)
def test_aggregation_by_hand(mode: str, expected: float) -> None:
    assert agg_loss(LOSSES, MASK, mode).item() == pytest.approx(expected)
    scale = LossScale.of(MASK, norm=10)
    assert (scale.tokens, scale.seqs, scale.norm) == (4, 2, 10)
    if mode == "seq-mean-token-sum-norm":
        assert agg_loss(LOSSES, MASK, mode, scale).item() == pytest.approx(10 / (2 * 10))


def test_unknown_aggregation() -> None:
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'; known: token-mean"):
        agg_loss(LOSSES, MASK, "mean")


@given(
    st.lists(st.lists(st.booleans(), min_size=5, max_size=5), min_size=2, max_size=8),
    st.integers(1, 7),
    st.sampled_from(LOSS_AGGS),
)
def test_parts_add_up_to_the_whole(rows: list[list[bool]], cut: int, mode: str) -> None:
    """Aggregated with the whole batch's scale, micro-batches (or ranks) add up to the
    whole batch: its value and its gradient."""
    mask = torch.tensor(rows, dtype=torch.float64)
    cut = min(cut, len(rows) - 1)
    torch.manual_seed(len(rows) * 10 + cut)
    base = torch.randn(len(rows), 5, dtype=torch.float64)
    scale = LossScale.of(mask, norm=7)

    whole = base.clone().requires_grad_(True)
    agg_loss(whole**2, mask, mode, scale).backward()
    parts = base.clone().requires_grad_(True)
    total = agg_loss(parts[:cut] ** 2, mask[:cut], mode, scale)
    total = total + agg_loss(parts[cut:] ** 2, mask[cut:], mode, scale)
    total.backward()
    expected = agg_loss(base**2, mask, mode, scale)
    assert total.item() == pytest.approx(expected.item(), rel=1e-12, abs=1e-12)
    assert whole.grad is not None and parts.grad is not None
    torch.testing.assert_close(parts.grad, whole.grad)
    assert (whole.grad[mask == 0] == 0).all()


def test_ppo_loss_by_hand_in_each_mode() -> None:
    """Unclipped PPO is -A * ratio per token; at ratio 1 the loss is -A, aggregated."""
    logp = f64([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    adv = f64([[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]])
    mask = f64([[1, 1, 1], [1, 0, 0]])
    expect = {
        "token-mean": (3 * -1 + -3) / 4,
        "seq-mean-token-sum": (-3 + -3) / 2,
        "seq-mean-token-mean": (-1 + -3) / 2,
        "seq-mean-token-sum-norm": (-3 + -3) / (2 * 3),
    }
    for mode, value in expect.items():
        loss, _ = ppo_policy_loss(logp, logp.clone(), adv, mask, loss_agg=mode)
        assert loss.item() == pytest.approx(value), mode


# ---------------------------------------------------------------- GSPO


def test_gspo_uses_one_ratio_per_sequence() -> None:
    old = f64([[-1.0, -1.0, -1.0], [-1.0, -1.0, 0.0]])
    logp = (old + f64([[0.1, -0.1, 0.3], [0.2, 0.0, 5.0]])).requires_grad_(True)
    mask = f64([[1, 1, 1], [1, 1, 0]])
    adv = f64([[2.0, 2.0, 2.0], [-1.0, -1.0, -1.0]])
    loss, stats = gspo_policy_loss(logp, old, adv, mask, clip=0.5, clip_high=0.5)
    s1, s2 = math.exp((0.1 - 0.1 + 0.3) / 3), math.exp((0.2 + 0.0) / 2)  # geometric means
    # seq-mean-token-mean: each sequence's loss is -A * s (the same on each of its tokens).
    assert loss.item() == pytest.approx((-2 * s1 + 1 * s2) / 2)
    assert stats["seq_ratio"].item() == pytest.approx((s1 + s2) / 2)
    loss.backward()
    assert logp.grad is not None
    # d(-A s_i)/d logp_it = -A s_i / n_i, then / 2 sequences; nothing on the masked token.
    expected = f64([[-2 * s1 / 3] * 3, [s2 / 2, s2 / 2, 0.0]]) / 2
    torch.testing.assert_close(logp.grad, expected)


def test_gspo_clips_whole_sequences() -> None:
    old = f64([[-1.0, -1.0], [-1.0, -1.0]])
    logp = (old + f64([[0.01, 0.01], [0.0, 0.0]])).requires_grad_(True)
    adv = f64([[1.0, 1.0], [1.0, 1.0]])
    mask = torch.ones(2, 2)
    # Defaults 3e-4 / 4e-4: the first sequence's ratio e^0.01 is past 1 + 4e-4.
    loss, stats = gspo_policy_loss(logp, old, adv, mask)
    assert stats["clip_frac"].item() == pytest.approx(0.5)
    loss.backward()
    assert logp.grad is not None
    assert (logp.grad[0] == 0).all() and (logp.grad[1] != 0).all()


def test_gspo_on_one_token_sequences_is_ppo() -> None:
    torch.manual_seed(0)
    old = torch.randn(6, 1, dtype=torch.float64)
    logp = old + 0.3 * torch.randn(6, 1, dtype=torch.float64)
    adv = torch.randn(6, 1, dtype=torch.float64)
    mask = torch.ones(6, 1)
    for mode in LOSS_AGGS:
        gspo, _ = gspo_policy_loss(logp, old, adv, mask, clip=0.2, clip_high=0.3, loss_agg=mode)
        ppo, _ = ppo_policy_loss(logp, old, adv, mask, clip=0.2, clip_high=0.3, loss_agg=mode)
        assert gspo.item() == pytest.approx(ppo.item()), mode


# ---------------------------------------------------------------- CISPO


def test_cispo_weights_log_probs_by_a_clipped_ratio() -> None:
    old = f64([[-1.0, -1.0, -1.0, -1.0]])
    delta = f64([[0.5, 0.1, -0.5, 0.0]])  # ratios e^0.5 (clipped to 1.28), e^0.1, e^-0.5
    logp = (old + delta).requires_grad_(True)
    adv = f64([[2.0, 2.0, 2.0, 2.0]])
    mask = f64([[1, 1, 1, 0]])
    loss, stats = cispo_policy_loss(logp, old, adv, mask)
    weights = [1.28, math.exp(0.1), math.exp(-0.5)]  # no lower bound by default
    values = [-0.5, -0.9, -1.5]
    assert loss.item() == pytest.approx(
        sum(-w * 2 * v for w, v in zip(weights, values, strict=True)) / 3
    )
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)
    loss.backward()
    assert logp.grad is not None
    # Unlike PPO-clip, the clipped token keeps its gradient: -weight * A / tokens.
    torch.testing.assert_close(logp.grad, f64([[-2 * w / 3 for w in weights] + [0.0]]))


def test_cispo_and_gspo_give_masked_tokens_no_gradient() -> None:
    torch.manual_seed(1)
    old = torch.randn(3, 4, dtype=torch.float64)
    adv = torch.randn(3, 4, dtype=torch.float64)
    mask = f64([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    for fn in (cispo_policy_loss, gspo_policy_loss):
        logp = (old + 0.1).requires_grad_(True)
        poisoned = torch.where(mask.bool(), old, torch.full_like(old, math.nan))
        loss, _ = fn(logp, poisoned, adv, mask)
        loss.backward()
        assert logp.grad is not None and math.isfinite(loss.item())
        assert (logp.grad[mask == 0] == 0).all(), fn.__name__


# ---------------------------------------------------------------- config


def test_each_loss_has_its_clip_range() -> None:
    assert set(POLICY_LOSSES) == {"ppo", "gspo", "cispo"}
    assert RLConfig().clip_range == (0.2, 0.2)
    assert RLConfig(clip_high=0.28).clip_range == (0.2, 0.28)
    assert RLConfig(policy_loss="gspo").clip_range == (3e-4, 4e-4)
    assert RLConfig(policy_loss="cispo").clip_range == (1.0, 0.28)
    assert RLConfig(policy_loss="cispo", clip=0.5).clip_range == (0.5, 0.5)
    assert RLConfig().aggregation == RLConfig(policy_loss="cispo").aggregation == "token-mean"
    assert RLConfig(policy_loss="gspo").aggregation == "seq-mean-token-mean"
    assert RLConfig(policy_loss="gspo", loss_agg="token-mean").aggregation == "token-mean"
    with pytest.raises(ValueError, match="dual_clip applies to the ppo policy loss, not gspo"):
        RLConfig(policy_loss="gspo", dual_clip=3.0)
    with pytest.raises(ValueError, match=r"rl\.loss_agg: unknown 'sum'; known: "):
        RLConfig(loss_agg="sum")
    with pytest.raises(
        ValueError, match=r"rl\.policy_loss: unknown 'dpo'; known: cispo, gspo, ppo"
    ):
        RLConfig(policy_loss="dpo")
    with pytest.raises(ValueError, match=r"rl.clip must be in \(0, 1\]"):
        RLConfig(clip=1.5)
