"""The losses of an update: policy losses (PPO-clip, GSPO, CISPO), the value loss, and how
per-token losses become one number (``rl.loss_agg``).

The conventions of :mod:`searchr1.rl.algos` hold: ``[B, T]`` tensors, ``mask`` 1 on the
tokens the policy sampled; masked-out tokens contribute nothing and get exactly zero
gradient, whatever their entries hold.

A policy loss takes ``loss_agg`` (a name in :data:`LOSS_AGGS`) and a :class:`LossScale`:
the counts it divides by. Left out, they are the batch's own; the update passes those of
the whole mini-batch over every rank, so that the losses of its micro-batches on all
ranks add up to the loss of the mini-batch in one process, in every mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from searchr1.rl.algos import _MAX_LOG_RATIO, _check_same_shape, _where, masked_mean

__all__ = [
    "LOSS_AGGS",
    "POLICY_LOSSES",
    "LossScale",
    "PolicyLoss",
    "agg_loss",
    "cispo_policy_loss",
    "gspo_policy_loss",
    "policy_loss",
    "ppo_policy_loss",
    "value_loss",
]

#: How per-token losses ``l`` (masked by ``m``) become one number, over ``N`` sequences:
#:
#: - ``token-mean``: ``sum(l) / sum(m)``, every token alike (verl's default; DAPO's);
#: - ``seq-mean-token-sum``: ``sum(l) / N``, each sequence its token sum;
#: - ``seq-mean-token-mean``: ``sum_i(mean_t l_i) / N``, every sequence alike (GRPO's
#:   paper; long responses then weigh less per token, its length bias);
#: - ``seq-mean-token-sum-norm``: ``sum(l) / (N * L)`` with ``L`` a fixed token count
#:   (Dr. GRPO: no per-sequence length in the divisor).
LOSS_AGGS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


@dataclass(frozen=True)
class LossScale:
    """What an aggregation divides by: ``tokens`` (mask-1 tokens), ``seqs`` (sequences
    with at least one) and ``norm`` (Dr. GRPO's fixed tokens per sequence)."""

    tokens: float
    seqs: float
    norm: float

    @classmethod
    def of(cls, mask: Tensor, norm: float | None = None) -> LossScale:
        """The counts of ``mask`` ``[B, T]`` itself; ``norm`` defaults to ``T``."""
        keep = mask.bool()
        return cls(
            tokens=float(keep.sum()),
            seqs=float(keep.any(dim=-1).sum()),
            norm=float(mask.shape[-1] if norm is None else norm),
        )


def agg_loss(
    losses: Tensor, mask: Tensor, mode: str = "token-mean", scale: LossScale | None = None
) -> Tensor:
    """``losses`` ``[B, T]`` as one 0-dim tensor, aggregated as ``mode`` says (see
    :data:`LOSS_AGGS`), divided by ``scale``'s counts (default: those of ``mask``).

    Summed over the parts of a batch, each aggregated with the whole batch's scale, it
    gives the whole batch's aggregate: rows are never split, so per-sequence means stay
    within a part.
    """
    _check_same_shape(losses=losses, mask=mask)
    if mode not in LOSS_AGGS:
        raise ValueError(f"unknown loss aggregation {mode!r}; known: {', '.join(LOSS_AGGS)}")
    if scale is None:
        scale = LossScale.of(mask)
    keep = mask.bool()
    kept = _where(keep, losses)
    if mode == "token-mean":
        return kept.sum() / max(scale.tokens, 1.0)
    per_seq = kept.sum(dim=-1)
    if mode == "seq-mean-token-mean":
        per_seq = per_seq / keep.sum(dim=-1).clamp(min=1)
    elif mode == "seq-mean-token-sum-norm":
        per_seq = per_seq / scale.norm
    return per_seq.sum() / max(scale.seqs, 1.0)


# --- policy losses --------------------------------------------------------------------------


def _log_ratio(logprobs: Tensor, old_logprobs: Tensor, keep: Tensor) -> Tensor:
    return _where(keep, logprobs - old_logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip: float = 0.2,
    clip_high: float | None = None,
    dual_clip: float | None = None,
    loss_agg: str = "token-mean",
    scale: LossScale | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate loss.

    ``logprobs`` (current policy, with gradient), ``old_logprobs`` (the policy that
    sampled), ``advantages`` (constants: no gradient flows into them), ``mask``:
    ``[B, T]``. With ``ratio = exp(logprobs - old_logprobs)`` (log-ratio clamped to
    [-20, 20], as verl) the per-token loss is::

        max(-A * ratio, -A * clamp(ratio, 1 - clip, 1 + clip_high))

    (``clip_high`` defaults to ``clip``; a larger one is DAPO's clip-higher). With
    ``dual_clip = c > 1`` (dual-clip PPO, verl's ``clip_ratio_c``) the loss of a token
    with ``A < 0`` is further capped at ``-c * A``. The per-token losses are aggregated
    by :func:`agg_loss` (default: the mean over masked-in tokens of the whole batch).

    Returns ``(loss, stats)``: ``loss`` a 0-dim tensor; ``stats`` detached 0-dim
    tensors, token means — ``clip_frac`` (tokens where the clipped term was taken),
    ``approx_kl`` (mean of ``old_logprobs - logprobs``), ``dual_clip_frac`` (tokens
    capped by the dual clip; 0 without it).
    """
    _check_same_shape(
        logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask
    )
    if clip_high is None:
        clip_high = clip
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    keep = mask.bool()
    log_ratio = _log_ratio(logprobs, old_logprobs, keep)
    adv = _where(keep, advantages.detach())
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip, 1.0 + clip_high)
    losses = torch.maximum(unclipped, clipped)
    dual_frac = torch.zeros((), device=losses.device)
    if dual_clip is not None:
        cap = -adv * dual_clip
        capped = (adv < 0) & (losses > cap)
        losses = torch.where(capped, cap, losses)
        dual_frac = masked_mean(capped.float(), keep)
    stats = {
        "clip_frac": masked_mean((clipped > unclipped).float(), keep).detach(),
        "approx_kl": masked_mean(-log_ratio, keep).detach(),
        "dual_clip_frac": dual_frac.detach(),
    }
    return agg_loss(losses, keep, loss_agg, scale), stats


def gspo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip: float = 3e-4,
    clip_high: float | None = 4e-4,
    loss_agg: str = "seq-mean-token-mean",
    scale: LossScale | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO's loss (Zheng et al. 2025): PPO-clip on one importance ratio per sequence.

    Shapes as :func:`ppo_policy_loss`. The sequence ratio is the geometric mean of its
    tokens' ratios, ``s_i = exp(mean_t (logprobs - old_logprobs))`` over masked-in
    tokens. Each token carries it as ``s_i * exp(logprobs - sg(logprobs))`` (GSPO-token:
    the value ``s_i``, the gradient ``s_i * d logprobs``), and::

        max(-A * s, -A * clamp(s, 1 - clip, 1 + clip_high))

    so a sequence is clipped whole, in ranges far narrower than PPO's (the paper's 3e-4
    and 4e-4, the defaults). ``clip_high`` None means ``clip``. Aggregated by
    :func:`agg_loss`; with the default ``seq-mean-token-mean`` the gradient of a sequence
    is that of ``s_i`` itself. Stats: ``clip_frac`` (tokens of clipped sequences),
    ``approx_kl`` (token mean of ``old_logprobs - logprobs``), ``seq_ratio`` (the mean
    ``s_i``).
    """
    _check_same_shape(
        logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask
    )
    if clip_high is None:
        clip_high = clip
    keep = mask.bool()
    log_ratio = _log_ratio(logprobs, old_logprobs, keep)
    lengths = keep.sum(dim=-1, keepdim=True).clamp(min=1)
    seq_log_ratio = log_ratio.sum(dim=-1, keepdim=True) / lengths  # [B, 1]
    live = _where(keep, logprobs)
    token_log_ratio = (live - live.detach() + seq_log_ratio.detach()).clamp(max=_MAX_LOG_RATIO)
    ratio = torch.exp(token_log_ratio)
    adv = _where(keep, advantages.detach())
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip, 1.0 + clip_high)
    losses = torch.maximum(unclipped, clipped)
    has_tokens = keep.any(dim=-1)
    seq_ratio = torch.exp(seq_log_ratio.squeeze(-1).detach())
    stats = {
        "clip_frac": masked_mean((clipped > unclipped).float(), keep).detach(),
        "approx_kl": masked_mean(-log_ratio, keep).detach(),
        "seq_ratio": masked_mean(seq_ratio, has_tokens),
    }
    return agg_loss(losses, keep, loss_agg, scale), stats


def cispo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip: float = 1.0,
    clip_high: float | None = 0.28,
    loss_agg: str = "token-mean",
    scale: LossScale | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO's loss (MiniMax-M1, 2025): REINFORCE weighted by a clipped importance ratio.

    Shapes as :func:`ppo_policy_loss`. Per token::

        -sg(clamp(ratio, 1 - clip, 1 + clip_high)) * A * logprobs

    The ratio is clipped as a weight under stop-gradient, so no token's gradient is
    dropped, as PPO-clip drops those past its range. ``clip`` 1.0 (the default) sets no
    lower bound, as the paper does; ``clip_high`` None means ``clip``. Aggregated by
    :func:`agg_loss`. Stats: ``clip_frac`` (tokens whose weight was clipped),
    ``approx_kl``.
    """
    _check_same_shape(
        logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask
    )
    if clip_high is None:
        clip_high = clip
    keep = mask.bool()
    log_ratio = _log_ratio(logprobs, old_logprobs, keep).detach()
    ratio = torch.exp(log_ratio)
    weight = ratio.clamp(1.0 - clip, 1.0 + clip_high)
    adv = _where(keep, advantages.detach())
    losses = -weight * adv * _where(keep, logprobs)
    stats = {
        "clip_frac": masked_mean((weight != ratio).float(), keep).detach(),
        "approx_kl": masked_mean(-log_ratio, keep).detach(),
    }
    return agg_loss(losses, keep, loss_agg, scale), stats


@dataclass(frozen=True)
class PolicyLoss:
    """A policy loss by name (``rl.policy_loss``): ``fn(logprobs, old_logprobs,
    advantages, mask, clip=, clip_high=, loss_agg=, scale=, **options)``, and the clip
    range and aggregation it takes when the config leaves ``rl.clip`` / ``rl.clip_high``
    / ``rl.loss_agg`` unset (``clip_high`` None: the same as ``clip``). ``options``: the
    config fields only it reads (``rl.dual_clip`` for PPO)."""

    fn: Callable[..., tuple[Tensor, dict[str, Tensor]]]
    clip: float
    clip_high: float | None = None
    loss_agg: str = "token-mean"
    options: tuple[str, ...] = ()


#: The policy losses by name: the one dispatch of ``rl.policy_loss``.
POLICY_LOSSES: dict[str, PolicyLoss] = {
    "ppo": PolicyLoss(ppo_policy_loss, clip=0.2, options=("dual_clip",)),
    "gspo": PolicyLoss(gspo_policy_loss, clip=3e-4, clip_high=4e-4, loss_agg="seq-mean-token-mean"),
    "cispo": PolicyLoss(cispo_policy_loss, clip=1.0, clip_high=0.28),
}


def policy_loss(name: str) -> PolicyLoss:
    """The :class:`PolicyLoss` called ``name``; ``ValueError`` naming the known ones."""
    try:
        return POLICY_LOSSES[name]
    except KeyError:
        known = ", ".join(POLICY_LOSSES)
        raise ValueError(f"unknown policy loss {name!r}; known: {known}") from None


# --- the critic -----------------------------------------------------------------------------


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped value loss (verl's): ``0.5 * max((v - R)^2, (v_clip - R)^2)``.

    ``values`` (current critic, with gradient), ``old_values`` (the critic at rollout),
    ``returns`` (targets, e.g. from :func:`~searchr1.rl.algos.gae_advantages`), ``mask``:
    ``[B, T]``. ``v_clip = old + clamp(v - old, -clip, clip)``; ``clip=None`` gives the
    plain ``0.5 * (v - R)^2``. Token-mean over masked-in tokens; masked-out tokens get
    zero gradient. Returns ``(loss, stats)`` with ``stats["clip_frac"]``: the fraction
    of tokens where the clipped error was the larger (detached, 0-dim).
    """
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    keep = mask.bool()
    v = _where(keep, values)
    target = _where(keep, returns.detach())
    errors = (v - target) ** 2
    if clip is None:
        return 0.5 * masked_mean(errors, keep), {"clip_frac": torch.zeros((), device=v.device)}
    old = _where(keep, old_values.detach())
    v_clipped = torch.maximum(torch.minimum(v, old + clip), old - clip)
    errors_clipped = (v_clipped - target) ** 2
    loss = 0.5 * masked_mean(torch.maximum(errors, errors_clipped), keep)
    clip_frac = masked_mean((errors_clipped > errors).float(), keep).detach()
    return loss, {"clip_frac": clip_frac}
