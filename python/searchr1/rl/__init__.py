"""Reinforcement learning for searchr1: advantages, KL estimators and policy losses.

The math lives in :mod:`searchr1.rl.algos` (advantages, KL) and :mod:`searchr1.rl.losses`
(PPO-clip, GSPO, CISPO, the value loss, loss aggregation) as small pure torch functions
over ``[B, T]`` response-token tensors with a loss mask (1 = token the policy sampled,
0 = injected observation or padding). Importing this package needs torch.
"""

from __future__ import annotations

from searchr1.rl.algos import (
    ADVANTAGES,
    KL_ESTIMATORS,
    OUTCOME_ADVANTAGES,
    AdvantageEstimator,
    AdvantageInputs,
    KLEstimator,
    OutcomeAdvantageFn,
    compute_advantages,
    entropy_from_logits,
    gae_advantages,
    grpo_advantages,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalty,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    reinforce_pp_advantages,
    rloo_advantages,
    token_logprobs,
)
from searchr1.rl.losses import (
    LOSS_AGGS,
    POLICY_LOSSES,
    LossScale,
    PolicyLoss,
    agg_loss,
    cispo_policy_loss,
    gspo_policy_loss,
    policy_loss,
    ppo_policy_loss,
    value_loss,
)

__all__ = [
    "ADVANTAGES",
    "KL_ESTIMATORS",
    "LOSS_AGGS",
    "OUTCOME_ADVANTAGES",
    "POLICY_LOSSES",
    "AdvantageEstimator",
    "AdvantageInputs",
    "KLEstimator",
    "LossScale",
    "OutcomeAdvantageFn",
    "PolicyLoss",
    "agg_loss",
    "cispo_policy_loss",
    "compute_advantages",
    "entropy_from_logits",
    "gae_advantages",
    "grpo_advantages",
    "gspo_policy_loss",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "ppo_policy_loss",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "token_logprobs",
    "value_loss",
]
