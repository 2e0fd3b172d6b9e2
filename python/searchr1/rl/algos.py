"""The RL math: masked statistics, advantages and KL estimators (the losses are in
:mod:`searchr1.rl.losses`).

Small pure tensor functions in the style of verl's ``core_algos`` and torchtune's
``rlhf/loss``. Conventions, everywhere:

- ``B`` sequences (rows) by ``T`` response tokens; ``V`` the vocabulary size.
- ``mask``: ``[B, T]``, bool or 0/1 numbers: 1 on tokens the policy sampled, 0 on tokens
  the environment injected (retrieved documents, the invalid-action message) and on
  padding. Tokens with mask 0 are not actions: they get no advantage, no loss, no
  gradient, and whatever their entries hold (even NaN) changes no result.
- Log-probabilities are natural logs per token; rewards and scores are in reward units.

Advantage estimators differ in what they need, so they are plain functions:
:func:`gae_advantages` (PPO with a critic) and :func:`reinforce_pp_advantages` work on
token rewards; the group-relative ones work on one score per sequence and are also listed
in :data:`OUTCOME_ADVANTAGES`. :data:`ADVANTAGES` names the estimator of each algorithm
and is the one dispatch (:func:`compute_advantages`); KL estimators are listed in
:data:`KL_ESTIMATORS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "ADVANTAGES",
    "KL_ESTIMATORS",
    "OUTCOME_ADVANTAGES",
    "AdvantageEstimator",
    "AdvantageInputs",
    "KLEstimator",
    "OutcomeAdvantageFn",
    "advantage_estimator",
    "compute_advantages",
    "entropy_from_logits",
    "gae_advantages",
    "grpo_advantages",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "token_logprobs",
]

#: ``fn(scores [B], group_ids [B], mask [B, T]) -> advantages [B, T]``.
OutcomeAdvantageFn = Callable[[Tensor, Tensor, Tensor], Tensor]
#: ``fn(log_ratio [B, T]) -> kl [B, T]`` with ``log_ratio = logprobs - ref_logprobs``.
KLEstimator = Callable[[Tensor], Tensor]

# The log-ratio of new to old (or reference) policy is clamped to this before exp(),
# as verl does, so that one wild token cannot overflow to inf (or NaN gradients).
_MAX_LOG_RATIO = 20.0


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shapes differ: {shapes}")


def _where(mask: Tensor, x: Tensor) -> Tensor:
    """``x`` where ``mask``, else 0 — without letting NaN/inf at masked-out spots leak."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


# --- masked statistics ------------------------------------------------------------------


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over the positions where ``mask`` is 1.

    ``x``, ``mask``: same shape. ``dim``: reduce that dimension only; None: all of them
    (a 0-dim tensor).
    """
    _check_same_shape(x=x, mask=mask)
    picked = _where(mask, x)
    return picked.sum() if dim is None else picked.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1; 0 where there are none.

    ``x``, ``mask``: same shape. ``dim`` as in :func:`masked_sum`. Over all positions
    of a ``[B, T]`` batch this is the token mean (each sampled token weighs the same).
    """
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all positions where ``mask`` is 1 (a 0-dim tensor).

    ``unbiased``: divide by ``n - 1`` instead of ``n`` (as ``torch.var`` does); that
    needs ``n >= 2`` masked-in positions, else ``ValueError`` (as verl).
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = int(mask.bool().sum())
        if n < 2:
            raise ValueError(f"unbiased variance needs at least 2 masked-in values, got {n}")
        var = var * (n / (n - 1))
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` with mean and unbiased variance over ``mask``.

    ``x``, ``mask``: same shape; returns that shape, 0 where ``mask`` is 0.
    ``shift_mean=False`` adds the mean back (only the scale is normalised).
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return _where(mask, out)


# --- advantages -------------------------------------------------------------------------


def gae_advantages(
    token_rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over the sampled tokens of each sequence.

    ``token_rewards``, ``values``, ``mask``: ``[B, T]``. Returns ``(advantages,
    returns)``, both ``[B, T]`` and 0 where ``mask`` is 0, with no gradient.

    The MDP steps are the masked-in tokens only: an injected observation is not an
    action. For each step ``t``, with ``t'`` the next masked-in position (none: value 0,
    advantage 0)::

        delta_t = r_t + gamma * V_t' - V_t
        A_t     = delta_t + gamma * lam * A_t'

    so the recursion carries over observation tokens unchanged, and rewards or values
    at mask-0 positions are ignored: put the outcome reward on the last masked-in token.
    ``returns = A + V`` (the critic's target) uses the advantages before whitening; the
    advantages returned are whitened over the mask (:func:`masked_whiten`, which needs
    at least 2 masked-in tokens in the batch).

    Same as verl's ``compute_gae_advantage_return`` with its observation-token skipping.
    (Search-R1 ran its older copy, whose recursion also stepped through observation
    tokens, using the critic's values there.)
    """
    _check_same_shape(token_rewards=token_rewards, values=values, mask=mask)
    with torch.no_grad():
        keep = mask.bool()
        batch, length = token_rewards.shape
        zeros = torch.zeros(batch, dtype=values.dtype, device=values.device)
        next_value, next_adv = zeros, zeros
        advantages = torch.zeros_like(values)
        for t in reversed(range(length)):
            delta = token_rewards[:, t] + gamma * next_value - values[:, t]
            adv = delta + gamma * lam * next_adv
            next_adv = torch.where(keep[:, t], adv, next_adv)
            next_value = torch.where(keep[:, t], values[:, t], next_value)
            advantages[:, t] = next_adv
        returns = _where(keep, advantages + values)
        return masked_whiten(advantages, keep), returns


def reinforce_pp_advantages(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """REINFORCE++ advantages: discounted return-to-go, whitened over the batch.

    ``token_rewards``, ``mask``: ``[B, T]``. Returns ``[B, T]``, 0 where ``mask`` is 0,
    with no gradient. The return of a masked-in token is ``r_t + gamma * G_t'`` with
    ``t'`` the next masked-in position, i.e. discounting counts sampled tokens only and
    carries over observations; rewards at mask-0 positions are ignored. Then
    :func:`masked_whiten` over all masked-in tokens of the batch.

    verl (``compute_reinforce_plus_plus_outcome_advantage``) instead restarts the
    return at every mask-0 token, which is right for trailing padding but would cut the
    outcome reward off from the turns before an observation.
    """
    _check_same_shape(token_rewards=token_rewards, mask=mask)
    with torch.no_grad():
        keep = mask.bool()
        running = torch.zeros(
            token_rewards.shape[0], dtype=token_rewards.dtype, device=token_rewards.device
        )
        returns = torch.zeros_like(token_rewards)
        for t in reversed(range(token_rewards.shape[1])):
            running = torch.where(keep[:, t], token_rewards[:, t] + gamma * running, running)
            returns[:, t] = running
        return masked_whiten(returns, keep)


def _groups(scores: Tensor, group_ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Validate; return float scores, each row's group index, and group sizes."""
    if scores.dim() != 1 or group_ids.shape != scores.shape:
        raise ValueError(
            f"scores and group_ids must be [B]; got {tuple(scores.shape)}, {tuple(group_ids.shape)}"
        )
    if mask.dim() != 2 or mask.shape[0] != scores.shape[0]:
        raise ValueError(f"mask must be [B, T] with B = {scores.shape[0]}; got {tuple(mask.shape)}")
    if group_ids.is_floating_point():
        raise ValueError("group_ids must be an integer tensor")
    if not scores.is_floating_point():
        scores = scores.float()
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    return scores, inverse, counts


def _group_sum(values: Tensor, inverse: Tensor, n_groups: int) -> Tensor:
    out = torch.zeros(n_groups, dtype=values.dtype, device=values.device)
    return out.index_add_(0, inverse, values)


def grpo_advantages(
    scores: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """GRPO's group-relative advantage, one value per sequence spread over its tokens.

    ``scores``: ``[B]`` outcome rewards; ``group_ids``: ``[B]`` int64, equal for the
    responses to the same prompt, in any order and with any values; ``mask``:
    ``[B, T]``. Returns ``[B, T]``: ``(r_i - mean_g) / (std_g + eps)`` on the masked-in
    tokens of row ``i`` (``r_i - mean_g`` when ``norm_by_std`` is False, as Dr. GRPO),
    0 elsewhere, with no gradient. ``std_g`` is unbiased, as ``torch.std``.

    A group of one response gets mean 0 and std 1, so its advantage is
    ``r_i / (1 + eps)`` (``r_i`` without std normalisation): exactly what verl (and
    Search-R1's copy of it) does. Vectorised over the batch.
    """
    scores, inverse, counts = _groups(scores, group_ids, mask)
    with torch.no_grad():
        n = counts.to(scores.dtype)
        mean = _group_sum(scores, inverse, len(counts)) / n
        centred = scores - mean[inverse]
        var = _group_sum(centred**2, inverse, len(counts)) / (n - 1).clamp(min=1)
        single = (counts == 1)[inverse]
        centred = torch.where(single, scores, centred)
        if norm_by_std:
            std = torch.where(single, torch.ones_like(scores), var.sqrt()[inverse])
            centred = centred / (std + eps)
        return _where(mask, centred.unsqueeze(1).expand(mask.shape))


def rloo_advantages(scores: Tensor, group_ids: Tensor, mask: Tensor) -> Tensor:
    """RLOO: each score minus the mean of the *other* scores of its group.

    ``scores``: ``[B]``; ``group_ids``: ``[B]`` int64, any order; ``mask``: ``[B, T]``.
    Returns ``[B, T]``: ``r_i - (sum_g - r_i) / (n_g - 1)`` on the masked-in tokens of
    row ``i``, 0 elsewhere, no gradient. A group of one has no baseline and gets 0 (as
    verl's vectorised RLOO; its loop version would pass the raw score through).
    """
    scores, inverse, counts = _groups(scores, group_ids, mask)
    with torch.no_grad():
        n = counts.to(scores.dtype)[inverse]
        others = _group_sum(scores, inverse, len(counts))[inverse] - scores
        adv = torch.where(n > 1, scores - others / (n - 1).clamp(min=1), torch.zeros_like(scores))
        return _where(mask, adv.unsqueeze(1).expand(mask.shape))


#: Score-based, group-aware estimators by name (GRPO's and RLOO's).
OUTCOME_ADVANTAGES: dict[str, OutcomeAdvantageFn] = {
    "grpo": grpo_advantages,
    "rloo": rloo_advantages,
}


@dataclass(frozen=True)
class AdvantageInputs:
    """What any advantage estimator may read, over the whole batch.

    ``scores``: ``[B]`` outcome rewards; ``group_ids``: ``[B]`` int64, equal for the
    responses to one prompt; ``mask``: ``[B, T]``; ``token_rewards``: ``[B, T]``, the
    outcome reward on each row's last sampled token (and any per-token penalty);
    ``values``: ``[B, T]`` critic values, for the estimators that need a critic.
    """

    scores: Tensor
    group_ids: Tensor
    mask: Tensor
    token_rewards: Tensor
    values: Tensor | None = None
    gamma: float = 1.0
    lam: float = 1.0
    norm_by_std: bool = True


@dataclass(frozen=True)
class AdvantageEstimator:
    """An estimator by name: ``fn(inputs) -> (advantages [B, T], returns [B, T] | None)``
    (returns: the critic's targets). ``critic``: it needs values (PPO's GAE).
    ``grouped``: it compares the responses of a group, so groups need >= 2."""

    fn: Callable[[AdvantageInputs], tuple[Tensor, Tensor | None]]
    critic: bool = False
    grouped: bool = False


def _gae(x: AdvantageInputs) -> tuple[Tensor, Tensor | None]:
    if x.values is None:
        raise ValueError("GAE needs the critic's values")
    return gae_advantages(x.token_rewards, x.values, x.mask, x.gamma, x.lam)


#: The advantage estimator of each algorithm (``rl.algorithm``): the one dispatch.
ADVANTAGES: dict[str, AdvantageEstimator] = {
    "grpo": AdvantageEstimator(
        lambda x: (grpo_advantages(x.scores, x.group_ids, x.mask, x.norm_by_std), None),
        grouped=True,
    ),
    "rloo": AdvantageEstimator(
        lambda x: (rloo_advantages(x.scores, x.group_ids, x.mask), None), grouped=True
    ),
    "reinforce++": AdvantageEstimator(
        lambda x: (reinforce_pp_advantages(x.token_rewards, x.mask, x.gamma), None)
    ),
    "ppo": AdvantageEstimator(_gae, critic=True),
}


def compute_advantages(algorithm: str, inputs: AdvantageInputs) -> tuple[Tensor, Tensor | None]:
    """The advantages (and the critic's returns, or None) of ``algorithm``, a name in
    :data:`ADVANTAGES`."""
    return advantage_estimator(algorithm).fn(inputs)


def advantage_estimator(algorithm: str) -> AdvantageEstimator:
    """The :class:`AdvantageEstimator` of ``algorithm``; ``ValueError`` naming the known
    ones when there is none."""
    try:
        return ADVANTAGES[algorithm]
    except KeyError:
        known = ", ".join(ADVANTAGES)
        raise ValueError(f"unknown algorithm {algorithm!r}; known: {known}") from None


# --- KL ---------------------------------------------------------------------------------


def kl_k1(log_ratio: Tensor) -> Tensor:
    """k1: ``log p - log q`` — unbiased for KL(p || q) under samples of p, high variance."""
    return log_ratio


def kl_k2(log_ratio: Tensor) -> Tensor:
    """k2: ``0.5 * (log p - log q)^2`` — biased, low variance, non-negative."""
    return 0.5 * log_ratio.square()


def kl_k3(log_ratio: Tensor) -> Tensor:
    """k3 (verl's ``low_var_kl``): ``exp(d) - d - 1`` with ``d = log q - log p``.

    Unbiased for KL(p || q) and non-negative. As verl: ``d`` is clamped to [-20, 20]
    before ``exp`` and the result to [-10, 10].
    """
    d = (-log_ratio).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return (torch.exp(d) - d - 1).clamp(-10.0, 10.0)


#: KL estimator by name: ``k1`` / ``k2`` / ``k3`` and verl's names for them
#: (``kl``, ``mse``, ``low_var_kl``).
KL_ESTIMATORS: dict[str, KLEstimator] = {
    "k1": kl_k1,
    "kl": kl_k1,
    "k2": kl_k2,
    "mse": kl_k2,
    "k3": kl_k3,
    "low_var_kl": kl_k3,
}


def kl_penalty(
    logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3", mask: Tensor | None = None
) -> Tensor:
    """Per-token estimate of KL(policy || reference), ``[B, T]``.

    ``logprobs``, ``ref_logprobs``: ``[B, T]`` log-probs of the sampled tokens under the
    policy and the reference model. ``kind``: a name in :data:`KL_ESTIMATORS`
    (``k1``/``kl``, ``k2``/``mse``, ``k3``/``low_var_kl``). With ``mask``, positions
    where it is 0 are 0 and pass no gradient. Differentiable in ``logprobs`` (the
    GRPO KL loss) — detach it for the in-reward penalty.
    """
    _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    try:
        estimator = KL_ESTIMATORS[kind]
    except KeyError:
        known = ", ".join(KL_ESTIMATORS)
        raise ValueError(f"unknown KL estimator {kind!r}; known: {known}") from None
    log_ratio = logprobs - ref_logprobs
    if mask is None:
        return estimator(log_ratio)
    _check_same_shape(logprobs=logprobs, mask=mask)
    return _where(mask, estimator(_where(mask, log_ratio)))


# --- from logits ------------------------------------------------------------------------


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy (nats) of the softmax of ``logits`` ``[..., V]`` -> ``[...]``, e.g. ``[B, T]``.

    ``-sum(p * log p)`` with ``log p = log_softmax(z)`` (``z - logsumexp(z)``), in
    float32 (or float64). Working from ``log_softmax`` keeps it accurate for any finite
    logits, however large (verl's ``logsumexp(z) - sum(p * z)`` loses digits to
    cancellation when ``|z|`` is large). Differentiable.
    """
    z = logits if logits.dtype == torch.float64 else logits.float()
    logp = torch.log_softmax(z, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def token_logprobs(logits: Tensor, ids: Tensor) -> Tensor:
    """Log-prob of each token in ``ids`` ``[...]`` under ``logits`` ``[..., V]`` -> ``[...]``.

    ``log_softmax(z)[id] = z[id] - logsumexp(z)``, in float32 (or float64), without
    materialising the full log-softmax. Logits must already be divided by the sampling
    temperature. Differentiable in ``logits``.
    """
    if ids.shape != logits.shape[:-1]:
        raise ValueError(
            f"ids {tuple(ids.shape)} must match logits {tuple(logits.shape)} without V"
        )
    z = logits if logits.dtype == torch.float64 else logits.float()
    picked = z.gather(-1, ids.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(z, dim=-1)
