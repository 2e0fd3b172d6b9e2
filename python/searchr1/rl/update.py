"""The update phase of a step: PPO-clip epochs over mini-batches of a rolled-out batch,
accumulating micro-batches, on the loss-mask tokens only."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from searchr1.rl.algos import kl_penalty
from searchr1.rl.losses import LossScale, agg_loss, policy_loss, value_loss
from searchr1.rl.modeling import response_logprobs, response_values

if TYPE_CHECKING:
    from searchr1.rl.trainer import Trainer

__all__ = ["micro_batches", "ppo_update"]


def _backward(loss: torch.Tensor) -> None:
    loss.backward()  # type: ignore[no-untyped-call]


def _scalar(x: Any) -> float:
    if hasattr(x, "full_tensor"):  # a DTensor (FSDP): its value over all shards
        x = x.full_tensor()
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def micro_batches(
    batch: dict[str, torch.Tensor], idx: torch.Tensor, size: int
) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, len(idx), size):
        rows = idx[start : start + size]
        yield {k: v[rows] for k, v in batch.items()}


def ppo_update(t: Trainer, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
    """``rl.ppo_epochs`` passes over ``batch`` (this rank's rows, with advantages): one
    optimizer step per mini-batch of ``rl.mini_batch_size`` prompts' groups (all ranks'
    rows together), each the sum of its micro-batches' losses, aggregated as
    ``rl.loss_agg`` says over the counts of the whole mini-batch on every rank
    (:class:`LossScale`), so the step equals the one-process step. Returns the means of
    the losses and statistics over the optimizer steps."""
    rl = t.config.rl
    loss_fn = policy_loss(rl.policy_loss)
    clip, clip_high = rl.clip_range
    agg = rl.aggregation
    options = {name: getattr(rl, name) for name in loss_fn.options}
    norm = rl.loss_agg_norm or t.config.rollout.max_sampled_tokens
    n = batch["input_ids"].shape[0]
    mini = (rl.mini_batch_size * rl.group_size) // t.dist.world or n
    sums: dict[str, float] = defaultdict(float)
    count = 0
    generator = torch.Generator().manual_seed(t.config.run.seed * 7919 + step)
    t.actor.train()
    if t.critic is not None:
        t.critic.train()
    for _ in range(rl.ppo_epochs):
        order = torch.randperm(n, generator=generator).to(t.device)
        for start in range(0, n, mini):
            rows = order[start : start + mini]
            # Every micro-batch divides by the counts of all ranks' mini-batch.
            mask = batch["mask"][rows].bool()
            scale = LossScale(
                tokens=float(t.dist.sum_(mask.sum())),
                seqs=float(t.dist.sum_(mask.any(dim=-1).sum())),
                norm=float(norm),
            )
            t.actor_opt.zero_grad(set_to_none=True)
            if t.critic_opt is not None:
                t.critic_opt.zero_grad(set_to_none=True)
            for micro in micro_batches(batch, rows, rl.micro_batch_size):
                # Token-mean statistics weigh their micro-batch's share of the tokens.
                weight = float(micro["mask"].sum()) / max(scale.tokens, 1.0)
                with t._autocast():
                    logprobs, entropy = response_logprobs(
                        t.actor, micro, t.config.rollout.temperature, with_entropy=True
                    )
                logprobs = logprobs.float()
                pg_loss, pg_stats = loss_fn.fn(
                    logprobs,
                    micro["old_logprobs"],
                    micro["advantages"],
                    micro["mask"],
                    clip=clip,
                    clip_high=clip_high,
                    loss_agg=agg,
                    scale=scale,
                    **options,
                )
                assert entropy is not None
                ent = agg_loss(entropy.float(), micro["mask"], agg, scale)
                loss = pg_loss - rl.entropy_coef * ent
                if "ref_logprobs" in micro and not rl.kl_in_reward:
                    kl = agg_loss(
                        kl_penalty(logprobs, micro["ref_logprobs"], rl.kl_estimator),
                        micro["mask"],
                        agg,
                        scale,
                    )
                    loss = loss + rl.kl_coef * kl
                    sums["kl_loss"] += _scalar(kl)
                _backward(loss)
                sums["pg_loss"] += _scalar(pg_loss)
                sums["entropy"] += _scalar(ent)
                for key, value in pg_stats.items():
                    sums[key] += _scalar(value) * weight
                if t.critic is not None:
                    with t._autocast():
                        values = response_values(t.critic, micro)
                    v_loss, _ = value_loss(
                        values.float(),
                        micro["values"],
                        micro["returns"],
                        micro["mask"],
                        rl.value_clip,
                    )
                    _backward(v_loss * weight)
                    sums["value_loss"] += _scalar(v_loss) * weight
            if not t.fsdp:  # FSDP has reduce-scattered (summed) them already
                t.dist.sum_grads(t.actor.parameters())
            grad_norm = torch.nn.utils.clip_grad_norm_(t.actor.parameters(), rl.max_grad_norm)
            sums["grad_norm"] += _scalar(grad_norm)
            t.actor_opt.step()
            if t.critic is not None and t.critic_opt is not None:
                if not t.fsdp:
                    t.dist.sum_grads(t.critic.parameters())
                torch.nn.utils.clip_grad_norm_(t.critic.parameters(), rl.max_grad_norm)
                t.critic_opt.step()
            count += 1
    t.actor.eval()
    # Losses were weighted by global tokens: their sum over ranks is the batch's.
    summed = t.dist.sum_values({k: v for k, v in sums.items() if k != "grad_norm"})
    out = {k: v / count for k, v in summed.items()}
    out["grad_norm"] = sums["grad_norm"] / count
    return out
