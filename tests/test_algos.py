"""RL math against hand-computed values and naive per-element Python references."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from searchr1.rl import (
    KL_ESTIMATORS,
    OUTCOME_ADVANTAGES,
    entropy_from_logits,
    gae_advantages,
    grpo_advantages,
    kl_penalty,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    ppo_policy_loss,
    reinforce_pp_advantages,
    rloo_advantages,
    token_logprobs,
    value_loss,
)

NAN = float("nan")
INF = float("inf")


def f64(x: object) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def close(actual: torch.Tensor, expected: object, tol: float = 1e-9) -> None:
    want = expected if isinstance(expected, torch.Tensor) else f64(expected)
    torch.testing.assert_close(actual, want.to(actual.dtype), atol=tol, rtol=tol)


def whiten_reference(rows: list[list[float]], mask: list[list[int]]) -> list[list[float]]:
    """Whiten over masked-in entries with the statistics module; 0 elsewhere."""
    picked = [
        v for row, m in zip(rows, mask, strict=True) for v, k in zip(row, m, strict=True) if k
    ]
    mean, var = statistics.mean(picked), statistics.variance(picked)
    scale = 1 / math.sqrt(var + 1e-8)
    return [
        [(v - mean) * scale if k else 0.0 for v, k in zip(row, m, strict=True)]
        for row, m in zip(rows, mask, strict=True)
    ]


# Random [B, T] problems for the property tests: rewards, values, a 0/1 mask with >= 2 ones.
Problem = tuple[list[list[float]], list[list[float]], list[list[int]]]


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    b, t = draw(st.integers(1, 3)), draw(st.integers(1, 7))
    if b * t < 2:
        t = 2
    number = st.floats(-5, 5, allow_nan=False)
    rewards = [[draw(number) for _ in range(t)] for _ in range(b)]
    values = [[draw(number) for _ in range(t)] for _ in range(b)]
    flat = draw(st.lists(st.integers(0, 1), min_size=b * t, max_size=b * t))
    if sum(flat) < 2:
        flat[0] = flat[-1] = 1
    mask = [flat[i * t : (i + 1) * t] for i in range(b)]
    return rewards, values, mask


def scrambled(x: torch.Tensor, mask: torch.Tensor, fill: float) -> torch.Tensor:
    """``x`` with every masked-out entry replaced by ``fill``."""
    return torch.where(mask.bool(), x, torch.full_like(x, fill))


# --- masked statistics ------------------------------------------------------------------

X = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
M = [[1, 0, 1], [0, 0, 1]]


def test_masked_sum_and_mean() -> None:
    x, m = f64(X), torch.tensor(M)
    close(masked_sum(x, m), 10.0)
    close(masked_mean(x, m), 10 / 3)
    close(masked_sum(x, m, dim=1), [4.0, 6.0])
    close(masked_mean(x, m, dim=1), [2.0, 6.0])
    close(masked_mean(x, m, dim=0), [1.0, 0.0, 4.5])  # a column with no token: 0
    close(masked_mean(x, torch.zeros_like(m)), 0.0)


def test_masked_stats_accept_bool_and_float_masks() -> None:
    x = f64(X)
    for m in (torch.tensor(M, dtype=torch.bool), torch.tensor(M, dtype=torch.float32)):
        close(masked_mean(x, m), 10 / 3)


def test_masked_stats_ignore_garbage_outside_the_mask() -> None:
    m = torch.tensor(M)
    x = scrambled(f64(X), m, NAN)
    close(masked_sum(x, m), 10.0)
    close(masked_mean(x, m), 10 / 3)
    close(masked_var(x, m), 114 / 18)


def test_masked_var() -> None:
    # Values 1, 3, 6: mean 10/3, squared deviations 49/9 + 1/9 + 64/9 = 114/9.
    x, m = f64(X), torch.tensor(M)
    close(masked_var(x, m), 114 / 18)
    close(masked_var(x, m, unbiased=False), 114 / 27)
    close(masked_var(x, m), statistics.variance([1.0, 3.0, 6.0]))


def test_masked_var_needs_two_values_when_unbiased() -> None:
    x = f64(X)
    one = torch.tensor([[1, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, one)
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, torch.zeros_like(one))
    close(masked_var(x, one, unbiased=False), 0.0)


def test_masked_whiten() -> None:
    x, m = f64(X), torch.tensor(M)
    s = math.sqrt(114 / 18 + 1e-8)
    expected = [[(1 - 10 / 3) / s, 0.0, (3 - 10 / 3) / s], [0.0, 0.0, (6 - 10 / 3) / s]]
    close(masked_whiten(x, m), expected)
    shifted = [
        [v + 10 / 3 if k else 0.0 for v, k in zip(r, mk, strict=True)]
        for r, mk in zip(expected, M, strict=True)
    ]
    close(masked_whiten(x, m, shift_mean=False), shifted)
    out = masked_whiten(x, m)
    close(masked_mean(out, m), 0.0)
    close(masked_var(out, m), 1.0, tol=1e-6)


def test_masked_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        masked_sum(torch.zeros(2, 3), torch.ones(2, 4))


# --- GAE --------------------------------------------------------------------------------


def naive_gae(
    rewards: list[float], values: list[float], mask: list[int], gamma: float, lam: float
) -> list[float]:
    """Textbook GAE on the masked-in steps only; unwhitened; 0 elsewhere."""
    adv = [0.0] * len(mask)
    next_value = next_adv = 0.0
    for t in reversed([t for t, k in enumerate(mask) if k]):
        delta = rewards[t] + gamma * next_value - values[t]
        next_adv = delta + gamma * lam * next_adv
        next_value = values[t]
        adv[t] = next_adv
    return adv


def test_gae_by_hand() -> None:
    # Row 0: steps at t = 0, 1, 4 (2 and 3 are an observation: reward 9 and value 7
    # there are ignored). gamma = 0.9, lam = 0.8, so gamma * lam = 0.72:
    #   t=4: delta = 1 - 0.4 = 0.6                  A = 0.6
    #   t=1: delta = 0.9 * 0.4 - 0.2 = 0.16         A = 0.16 + 0.72 * 0.6 = 0.592
    #   t=0: delta = 0.9 * 0.2 - 0.5 = -0.32        A = -0.32 + 0.72 * 0.592 = 0.10624
    # Row 1: steps at t = 0, 1, 2; padding after.
    #   t=2: delta = 2 - 1 = 1                      A = 1
    #   t=1: delta = 0.9 - 1 = -0.1                 A = -0.1 + 0.72 = 0.62
    #   t=0: delta = 0.9 - 1 = -0.1                 A = -0.1 + 0.72 * 0.62 = 0.3464
    rewards = f64([[0, 0, 9, 9, 1], [0, 0, 2, 0, 0]])
    values = f64([[0.5, 0.2, 7, 7, 0.4], [1, 1, 1, 5, 5]])
    mask = torch.tensor([[1, 1, 0, 0, 1], [1, 1, 1, 0, 0]])
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    raw = [[0.10624, 0.592, 0, 0, 0.6], [0.3464, 0.62, 1.0, 0, 0]]
    close(ret, [[0.60624, 0.792, 0, 0, 1.0], [1.3464, 1.62, 2.0, 0, 0]])
    close(adv, whiten_reference(raw, mask.tolist()))


def test_gae_gamma_lambda_one_is_return_minus_value() -> None:
    # gamma = lam = 1: A_t = (sum of later step rewards) - V_t, and returns are G_t.
    rewards = f64([[0, 0, 5, 1, 0]])
    values = f64([[0.2, 0.4, 9, 0.7, 9]])
    mask = torch.tensor([[1, 1, 0, 1, 0]])
    adv, ret = gae_advantages(rewards, values, mask)
    close(ret, [[1, 1, 0, 1, 0]])
    close(adv, whiten_reference([[0.8, 0.6, 0, 0.3, 0]], mask.tolist()))


@given(problems(), st.floats(0, 1), st.floats(0, 1))
def test_gae_matches_naive_reference(
    problem: Problem,
    gamma: float,
    lam: float,
) -> None:
    rewards, values, mask = problem
    adv, ret = gae_advantages(f64(rewards), f64(values), torch.tensor(mask), gamma, lam)
    raw = [naive_gae(r, v, m, gamma, lam) for r, v, m in zip(rewards, values, mask, strict=True)]
    expected_ret = [
        [a + v if k else 0.0 for a, v, k in zip(ra, rv, rm, strict=True)]
        for ra, rv, rm in zip(raw, values, mask, strict=True)
    ]
    close(ret, expected_ret, tol=1e-7)
    close(adv, whiten_reference(raw, mask), tol=1e-6)


@given(problems(), st.sampled_from([NAN, INF, -3.0, 1e6]))
def test_gae_ignores_masked_out_entries(problem: Problem, fill: float) -> None:
    rewards, values, mask = problem
    m = torch.tensor(mask)
    adv, ret = gae_advantages(f64(rewards), f64(values), m, 0.95, 0.9)
    adv2, ret2 = gae_advantages(
        scrambled(f64(rewards), m, fill), scrambled(f64(values), m, fill), m, 0.95, 0.9
    )
    torch.testing.assert_close(adv2, adv)
    torch.testing.assert_close(ret2, ret)
    assert (adv[m == 0] == 0).all() and (ret[m == 0] == 0).all()


def test_gae_has_no_gradient() -> None:
    values = f64([[1.0, 2.0, 3.0]]).requires_grad_()
    adv, ret = gae_advantages(f64([[0, 0, 1.0]]), values, torch.ones(1, 3))
    assert not adv.requires_grad and not ret.requires_grad


# --- REINFORCE++ ------------------------------------------------------------------------


def test_reinforce_pp_by_hand() -> None:
    # gamma = 0.5. Row 0: steps 0, 1, 3 (reward 7 at the observation is ignored):
    #   G3 = 1, G1 = 0.5 * 1 = 0.5, G0 = 0.25. The observation does not break the chain.
    # Row 1: steps 0..3: G3 = 2, G2 = 1, G1 = 0.5, G0 = 0.25.
    rewards = f64([[0, 0, 7, 1, 0], [0, 0, 0, 2, 0]])
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 1, 0]])
    adv = reinforce_pp_advantages(rewards, mask, gamma=0.5)
    returns = [[0.25, 0.5, 0, 1, 0], [0.25, 0.5, 1, 2, 0]]
    close(adv, whiten_reference(returns, mask.tolist()))


@given(problems(), st.floats(0, 1), st.sampled_from([NAN, -INF, 4.0]))
def test_reinforce_pp_matches_naive_reference(
    problem: Problem,
    gamma: float,
    fill: float,
) -> None:
    rewards, _, mask = problem
    returns = []
    for row, m in zip(rewards, mask, strict=True):
        g, out = 0.0, [0.0] * len(row)
        for t in reversed([t for t, k in enumerate(m) if k]):
            g = row[t] + gamma * g
            out[t] = g
        returns.append(out)
    mt = torch.tensor(mask)
    adv = reinforce_pp_advantages(f64(rewards), mt, gamma)
    close(adv, whiten_reference(returns, mask), tol=1e-6)
    torch.testing.assert_close(
        reinforce_pp_advantages(scrambled(f64(rewards), mt, fill), mt, gamma), adv
    )


# --- GRPO / RLOO ------------------------------------------------------------------------

SCORES = [1.0, 0.0, 0.5, 1.0, 0.0, 2.0]
GROUPS = [7, 3, 7, 3, 7, 11]  # interleaved; group 11 has one member
EPS = 1e-6


def test_grpo_by_hand() -> None:
    # Group 7: scores 1, 0.5, 0 -> mean 0.5, unbiased std sqrt((0.25 + 0 + 0.25) / 2) = 0.5.
    # Group 3: scores 0, 1 -> mean 0.5, std sqrt((0.25 + 0.25) / 1) = sqrt(0.5).
    # Group 11 (alone): mean 0, std 1 (verl) -> 2 / (1 + eps).
    s7, s3 = 0.5 + EPS, math.sqrt(0.5) + EPS
    expected = [0.5 / s7, -0.5 / s3, 0.0, 0.5 / s3, -0.5 / s7, 2 / (1 + EPS)]
    mask = torch.ones(6, 3)
    mask[0, 2] = 0
    mask[5, 0] = 0
    adv = grpo_advantages(f64(SCORES), torch.tensor(GROUPS), mask)
    assert adv.shape == (6, 3)
    full = [[a] * 3 for a in expected]
    full[0][2] = 0.0
    full[5][0] = 0.0
    close(adv, full)


def test_grpo_without_std() -> None:
    adv = grpo_advantages(f64(SCORES), torch.tensor(GROUPS), torch.ones(6, 1), norm_by_std=False)
    close(adv[:, 0], [0.5, -0.5, 0.0, 0.5, -0.5, 2.0])


def test_grpo_group_of_equal_scores_is_zero() -> None:
    adv = grpo_advantages(f64([1.0, 1.0, 1.0]), torch.tensor([0, 0, 0]), torch.ones(3, 2))
    close(adv, [[0, 0]] * 3)


def naive_grpo(scores: list[float], groups: list[int], norm: bool) -> list[float]:
    members: dict[int, list[float]] = defaultdict(list)
    for s, g in zip(scores, groups, strict=True):
        members[g].append(s)
    out = []
    for s, g in zip(scores, groups, strict=True):
        xs = members[g]
        mean, std = (statistics.mean(xs), statistics.stdev(xs)) if len(xs) > 1 else (0.0, 1.0)
        out.append((s - mean) / (std + EPS) if norm else s - mean)
    return out


def naive_rloo(scores: list[float], groups: list[int]) -> list[float]:
    members: dict[int, list[float]] = defaultdict(list)
    for s, g in zip(scores, groups, strict=True):
        members[g].append(s)
    out = []
    for s, g in zip(scores, groups, strict=True):
        xs = members[g]
        out.append(s - (sum(xs) - s) / (len(xs) - 1) if len(xs) > 1 else 0.0)
    return out


group_batches = st.lists(
    st.tuples(st.floats(-3, 3, allow_nan=False), st.integers(-2, 3)), min_size=1, max_size=12
)


@given(group_batches, st.booleans())
def test_grpo_matches_naive_reference(batch: list[tuple[float, int]], norm: bool) -> None:
    scores, groups = [s for s, _ in batch], [g * 10**12 for _, g in batch]
    adv = grpo_advantages(f64(scores), torch.tensor(groups), torch.ones(len(batch), 2), norm)
    expected = naive_grpo(scores, groups, norm)
    close(adv, [[a, a] for a in expected], tol=1e-6)


@given(group_batches)
def test_rloo_matches_naive_reference(batch: list[tuple[float, int]]) -> None:
    scores, groups = [s for s, _ in batch], [g for _, g in batch]
    adv = rloo_advantages(f64(scores), torch.tensor(groups), torch.ones(len(batch), 1))
    close(adv[:, 0], naive_rloo(scores, groups), tol=1e-9)


def test_group_advantages_follow_rows_in_any_order() -> None:
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    scores, groups, mask = f64(SCORES), torch.tensor(GROUPS), torch.ones(6, 2)
    for fn in OUTCOME_ADVANTAGES.values():
        base = fn(scores, groups, mask)
        close(fn(scores[perm], groups[perm], mask), base[perm])


def test_rloo_by_hand() -> None:
    # Group 7: 1, 0.5, 0 -> 1 - 0.25, 0.5 - 0.5, 0 - 0.75. Group 3: 0 - 1, 1 - 0.
    # Group 11: alone, no baseline -> 0.
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [0, 0], [1, 1], [1, 1]])
    adv = rloo_advantages(f64(SCORES), torch.tensor(GROUPS), mask)
    close(adv, [[0.75, 0.75], [-1, 0], [0, 0], [0, 0], [-0.75, -0.75], [0, 0]])


def test_group_advantages_validate_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[B\]"):
        grpo_advantages(torch.zeros(3), torch.zeros(4, dtype=torch.long), torch.ones(3, 2))
    with pytest.raises(ValueError, match="mask"):
        rloo_advantages(torch.zeros(3), torch.zeros(3, dtype=torch.long), torch.ones(4, 2))
    with pytest.raises(ValueError, match="integer"):
        grpo_advantages(torch.zeros(3), torch.zeros(3), torch.ones(3, 2))


def test_outcome_registry() -> None:
    assert OUTCOME_ADVANTAGES["grpo"] is grpo_advantages
    assert OUTCOME_ADVANTAGES["rloo"] is rloo_advantages
    assert set(OUTCOME_ADVANTAGES) == {"grpo", "rloo"}


# --- KL ---------------------------------------------------------------------------------


def test_kl_estimators_by_hand() -> None:
    logp, ref = f64([[-1.0, -2.0]]), f64([[-1.5, -1.0]])  # d = logp - ref = 0.5, -1
    close(kl_penalty(logp, ref, "k1"), [[0.5, -1.0]])
    close(kl_penalty(logp, ref, "k2"), [[0.125, 0.5]])
    # k3 = exp(ref - logp) - (ref - logp) - 1
    close(kl_penalty(logp, ref, "k3"), [[math.exp(-0.5) + 0.5 - 1, math.exp(1) - 1 - 1]])


def test_kl_aliases() -> None:
    logp, ref = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    for alias, kind in (("kl", "k1"), ("mse", "k2"), ("low_var_kl", "k3")):
        torch.testing.assert_close(kl_penalty(logp, ref, alias), kl_penalty(logp, ref, kind))
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3", "kl", "mse", "low_var_kl"}


def test_kl_k3_is_clamped_and_stays_differentiable() -> None:
    logp = f64([[-40.0, 0.0, -1.0]]).requires_grad_()
    ref = f64([[0.0, -40.0, -1.0]])
    kl = kl_penalty(logp, ref, "k3")
    close(kl.detach(), [[10.0, 10.0, 0.0]])
    kl.sum().backward()
    assert logp.grad is not None and torch.isfinite(logp.grad).all()


def test_kl_unknown_kind() -> None:
    with pytest.raises(ValueError, match=r"'k4'.*k1, kl, k2"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_with_mask(kind: str) -> None:
    mask = torch.tensor([[1, 0, 1]])
    logp = f64([[-1.0, NAN, -0.5]]).requires_grad_()
    ref = f64([[-0.5, -2.0, -0.5]])
    kl = kl_penalty(logp, ref, kind, mask=mask)
    assert kl[0, 1] == 0 and kl[0, 2] == 0
    kl.sum().backward()
    assert logp.grad is not None
    assert logp.grad[0, 1] == 0 and torch.isfinite(logp.grad).all()
    clean = kl_penalty(f64([[-1.0, 7.0, -0.5]]), ref, kind, mask=mask)
    torch.testing.assert_close(kl.detach(), clean)


# --- PPO policy loss --------------------------------------------------------------------


def naive_policy_loss(
    logp: list[float],
    old: list[float],
    adv: list[float],
    mask: list[int],
    clip: float,
    clip_high: float,
    dual: float | None,
) -> float:
    losses = []
    for lp, o, a, k in zip(logp, old, adv, mask, strict=True):
        if not k:
            continue
        r = math.exp(lp - o)
        loss = max(-a * r, -a * min(max(r, 1 - clip), 1 + clip_high))
        if dual is not None and a < 0:
            loss = min(loss, -a * dual)
        losses.append(loss)
    return sum(losses) / len(losses)


def test_ppo_loss_unclipped_is_minus_advantage_times_ratio() -> None:
    d = [0.1, -0.1, 0.05]
    adv = [1.0, -2.0, 0.5]
    old = f64([[-1.0, -2.0, -0.5]])
    logp = old + f64([d])
    loss, stats = ppo_policy_loss(logp, old, f64([adv]), torch.ones(1, 3))
    expected = -sum(a * math.exp(x) for a, x in zip(adv, d, strict=True)) / 3
    close(loss, expected)
    close(stats["clip_frac"], 0.0)
    close(stats["approx_kl"], -sum(d) / 3)
    close(stats["dual_clip_frac"], 0.0)


def test_ppo_loss_clipping() -> None:
    old = f64([[0.0, 0.0, 0.0, 0.0]])
    logp = f64([[math.log(1.5), math.log(0.5), math.log(0.5), math.log(1.5)]]).requires_grad_()
    adv = f64([[1.0, 1.0, -1.0, -1.0]])
    loss, stats = ppo_policy_loss(logp, old, adv, torch.ones(1, 4), clip=0.2)
    # ratio 1.5, A>0: clipped to 1.2 -> -1.2.  ratio 0.5, A>0: min objective keeps -0.5.
    # ratio 0.5, A<0: clipped to 0.8 -> 0.8.  ratio 1.5, A<0: unclipped 1.5.
    close(loss, (-1.2 - 0.5 + 0.8 + 1.5) / 4)
    close(stats["clip_frac"], 2 / 4)
    loss.backward()
    assert logp.grad is not None
    # Clipped tokens pass no gradient; unclipped ones pass -A * ratio / N.
    close(logp.grad, [[0.0, -0.5 / 4, 0.0, 1.5 / 4]])


def test_ppo_loss_clip_high() -> None:
    old, logp = f64([[0.0]]), f64([[math.log(1.25)]])
    adv, mask = f64([[1.0]]), torch.ones(1, 1)
    close(ppo_policy_loss(logp, old, adv, mask, clip=0.2)[0], -1.2)
    close(ppo_policy_loss(logp, old, adv, mask, clip=0.2, clip_high=0.28)[0], -1.25)
    # The lower bound stays 1 - clip.
    low = f64([[math.log(0.7)]])
    close(ppo_policy_loss(low, old, -adv, mask, clip=0.2, clip_high=0.28)[0], 0.8)


def test_ppo_loss_dual_clip_caps_negative_advantages() -> None:
    old = f64([[0.0, 0.0, 0.0]])
    logp = f64([[math.log(5.0), math.log(2.0), math.log(5.0)]]).requires_grad_()
    adv = f64([[-1.0, -1.0, 1.0]])
    mask = torch.ones(1, 3)
    plain, _ = ppo_policy_loss(logp, old, adv, mask)
    close(plain, (5.0 + 2.0 - 1.2) / 3)
    loss, stats = ppo_policy_loss(logp, old, adv, mask, dual_clip=3.0)
    # ratio 5 with A = -1 is capped at -c * A = 3; ratio 2 stays; A > 0 is untouched.
    close(loss, (3.0 + 2.0 - 1.2) / 3)
    close(stats["dual_clip_frac"], 1 / 3)
    loss.backward()
    assert logp.grad is not None
    close(logp.grad, [[0.0, 2.0 / 3, 0.0]])
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_policy_loss(logp, old, adv, mask, dual_clip=1.0)


def test_ppo_loss_masked_tokens_have_no_effect_and_zero_gradient() -> None:
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0]])
    old = f64([[-1.0, NAN, -0.5, -2.0], [INF, -0.3, -0.1, -1.0]])
    adv = f64([[0.5, NAN, -1.0, 9.0], [-INF, 2.0, 0.3, 9.0]])
    logp = f64([[-0.9, -50.0, -0.7, 30.0], [NAN, -0.35, -0.2, -1.0]]).requires_grad_()
    loss, stats = ppo_policy_loss(logp, old, adv, mask, dual_clip=3.0)
    loss.backward()
    assert logp.grad is not None
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert (logp.grad[mask == 0] == 0).all()
    assert (logp.grad[mask == 1] != 0).all()
    clean = [[-0.9, 0, -0.7, 0], [0, -0.35, -0.2, 0]]
    old_clean = [[-1.0, 0, -0.5, 0], [0, -0.3, -0.1, 0]]
    adv_clean = [[0.5, 0, -1.0, 0], [0, 2.0, 0.3, 0]]
    flat = [
        [v for row in rows for v in row] for rows in (clean, old_clean, adv_clean, mask.tolist())
    ]
    expected = naive_policy_loss(*flat, clip=0.2, clip_high=0.2, dual=3.0)
    close(loss, expected)
    for value in stats.values():
        assert torch.isfinite(value) and not value.requires_grad


@given(
    st.lists(
        st.tuples(st.floats(-1, 1), st.floats(-1, 1), st.floats(-3, 3), st.integers(0, 1)),
        min_size=1,
        max_size=10,
    ),
    st.sampled_from([0.1, 0.2, 0.3]),
    st.sampled_from([None, 0.28]),
    st.sampled_from([None, 2.0, 3.0]),
)
def test_ppo_loss_matches_naive_reference(
    tokens: list[tuple[float, float, float, int]],
    clip: float,
    clip_high: float | None,
    dual: float | None,
) -> None:
    logp, old, adv, mask = (list(col) for col in zip(*tokens, strict=True))
    if not any(mask):
        mask[0] = 1
    loss, _ = ppo_policy_loss(
        f64([logp]), f64([old]), f64([adv]), torch.tensor([mask]), clip, clip_high, dual
    )
    high = clip if clip_high is None else clip_high
    close(loss, naive_policy_loss(logp, old, adv, mask, clip, high, dual), tol=1e-9)


def test_ppo_loss_is_a_token_mean_over_the_batch() -> None:
    # Row 0 has 1 token, row 1 has 3: each token weighs 1/4 (not each row 1/2).
    old = torch.zeros(2, 3, dtype=torch.float64)
    adv = f64([[4.0, 0, 0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    loss, _ = ppo_policy_loss(old.clone(), old, adv, mask)
    close(loss, -(4 + 1 + 1 + 1) / 4)


# --- value loss -------------------------------------------------------------------------


def test_value_loss_by_hand() -> None:
    # clip 0.5; v_clip = old + clamp(v - old, -0.5, 0.5):
    #   v=1.5 old=0.5 R=2:    v_clip=1.0   errs 0.25, 1.00 -> 1.00 (clipped)
    #   v=2   old=2   R=1:    v_clip=2     errs 1.00, 1.00 -> 1.00
    #   v=-1  old=0   R=-2:   v_clip=-0.5  errs 1.00, 2.25 -> 2.25 (clipped)
    #   v=1   old=0   R=2:    v_clip=0.5   errs 1.00, 2.25 -> 2.25 (clipped)
    #   v=1   old=0   R=0.2:  v_clip=0.5   errs 0.64, 0.09 -> 0.64
    #   masked-out token with garbage.
    values = f64([[1.5, 2.0, -1.0, 1.0, 1.0, NAN]]).requires_grad_()
    old = f64([[0.5, 2.0, 0.0, 0.0, 0.0, INF]])
    returns = f64([[2.0, 1.0, -2.0, 2.0, 0.2, NAN]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, clip=0.5)
    close(loss, 0.5 * (1.0 + 1.0 + 2.25 + 2.25 + 0.64) / 5)
    close(stats["clip_frac"], 3 / 5)
    loss.backward()
    assert values.grad is not None
    # d/dv of 0.5 * (v - R)^2 / 5 where the unclipped error is taken; 0 where clipped
    # (v_clip is constant there) and at the masked-out token.
    close(values.grad, [[0.0, (2.0 - 1.0) / 5, 0.0, 0.0, (1.0 - 0.2) / 5, 0.0]])
    unclipped, stats = value_loss(values, old, returns, mask, clip=None)
    close(unclipped, 0.5 * (0.25 + 1.0 + 1.0 + 1.0 + 0.64) / 5)
    close(stats["clip_frac"], 0.0)


@given(problems(), st.sampled_from([NAN, INF, 3.0]))
def test_value_loss_ignores_masked_out_entries(problem: Problem, fill: float) -> None:
    a, b, mask = problem
    m = torch.tensor(mask)
    values, returns = f64(a), f64(b)
    old = values + 0.3
    loss, _ = value_loss(values, old, returns, m)
    loss2, _ = value_loss(
        scrambled(values, m, fill), scrambled(old, m, fill), scrambled(returns, m, fill), m
    )
    torch.testing.assert_close(loss2, loss)


# --- entropy and log-probs --------------------------------------------------------------


def naive_log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    total = math.log(sum(math.exp(v - top) for v in row)) + top
    return [v - total for v in row]


def test_entropy_by_hand() -> None:
    logits = f64([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), 0.0, 0.0]]])
    # Uniform over 4: ln 4. [1, 3, 1, 1] / 6: -(3 * (1/6) ln(1/6) + (1/2) ln(1/2)).
    expected = [[math.log(4), -(3 * (1 / 6) * math.log(1 / 6) + 0.5 * math.log(0.5))]]
    close(entropy_from_logits(logits), expected)


def test_entropy_is_stable_for_large_logits() -> None:
    logits = torch.tensor([[[1000.0, 1000.0], [-1000.0, 1000.0]]])
    close(entropy_from_logits(logits), [[math.log(2), 0.0]], tol=1e-6)


def test_entropy_from_half_precision_is_float32() -> None:
    logits = torch.zeros(2, 3, 8, dtype=torch.bfloat16)
    out = entropy_from_logits(logits)
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    close(out, [[math.log(8)] * 3] * 2, tol=1e-6)


@given(st.lists(st.floats(-30, 30), min_size=1, max_size=6))
def test_entropy_matches_naive(row: list[float]) -> None:
    logp = naive_log_softmax(row)
    expected = -sum(math.exp(lp) * lp for lp in logp)
    close(entropy_from_logits(f64([[row]])), [[expected]], tol=1e-9)


def test_token_logprobs_by_hand() -> None:
    logits = f64([[[0.0, math.log(3.0)], [1000.0, 0.0]]])
    ids = torch.tensor([[1, 1]])
    close(token_logprobs(logits, ids), [[math.log(0.75), -1000.0]])


def test_token_logprobs_matches_log_softmax_and_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64).requires_grad_()
    ids = torch.randint(0, 5, (2, 3), generator=gen)
    out = token_logprobs(logits, ids)
    naive = [
        [naive_log_softmax(logits[b, t].tolist())[int(ids[b, t])] for t in range(3)]
        for b in range(2)
    ]
    close(out.detach(), naive)
    out.sum().backward()
    assert logits.grad is not None
    # d log_softmax(z)[i] / dz = onehot(i) - softmax(z)
    expected = torch.nn.functional.one_hot(ids, 5).double() - torch.softmax(logits, -1)
    close(logits.grad, expected.detach())


def test_token_logprobs_half_precision_and_shapes() -> None:
    logits = torch.zeros(1, 2, 4, dtype=torch.bfloat16)
    out = token_logprobs(logits, torch.tensor([[0, 3]], dtype=torch.int32))
    assert out.dtype == torch.float32
    close(out, [[-math.log(4)] * 2], tol=1e-6)
    with pytest.raises(ValueError, match="ids"):
        token_logprobs(logits, torch.zeros(1, 3, dtype=torch.long))


def test_the_advantage_registry_is_the_dispatch() -> None:
    from searchr1.rl.algos import (
        ADVANTAGES,
        AdvantageInputs,
        compute_advantages,
        gae_advantages,
    )

    torch.manual_seed(0)
    mask = (torch.rand(6, 5) > 0.3).float()
    mask[:, 0] = 1
    scores = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    rewards = torch.zeros(6, 5)
    rewards[:, 0] = scores
    values = torch.randn(6, 5)
    inputs = AdvantageInputs(scores, groups, mask, rewards, values, gamma=0.9, lam=0.8)
    expected = {
        "grpo": (grpo_advantages(scores, groups, mask), None),
        "rloo": (rloo_advantages(scores, groups, mask), None),
        "reinforce++": (reinforce_pp_advantages(rewards, mask, 0.9), None),
        "ppo": gae_advantages(rewards, values, mask, 0.9, 0.8),
    }
    assert set(ADVANTAGES) == set(expected)
    for name, (advantages, returns) in expected.items():
        got, got_returns = compute_advantages(name, inputs)
        torch.testing.assert_close(got, advantages)
        if returns is None:
            assert got_returns is None
        else:
            torch.testing.assert_close(got_returns, returns)
    assert [n for n, e in ADVANTAGES.items() if e.critic] == ["ppo"]
    assert {n for n, e in ADVANTAGES.items() if e.grouped} == {"grpo", "rloo"}
    with pytest.raises(ValueError, match="unknown algorithm 'dpo'; known: grpo, rloo"):
        compute_advantages("dpo", inputs)
    with pytest.raises(ValueError, match="critic"):
        compute_advantages("ppo", AdvantageInputs(scores, groups, mask, rewards))
