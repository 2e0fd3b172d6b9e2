"""Reinforcement learning for searchr1: advantages, KL estimators and PPO/GRPO losses.

The math lives in :mod:`searchr1.rl.algos` as small pure torch functions over ``[B, T]``
response-token tensors with a loss mask (1 = token the policy sampled, 0 = injected
observation or padding). Importing this package needs torch.
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
    ppo_policy_loss,
    reinforce_pp_advantages,
    rloo_advantages,
    token_logprobs,
    value_loss,
)

__all__ = [
    "ADVANTAGES",
    "KL_ESTIMATORS",
    "OUTCOME_ADVANTAGES",
    "AdvantageEstimator",
    "AdvantageInputs",
    "KLEstimator",
    "OutcomeAdvantageFn",
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
    "ppo_policy_loss",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "token_logprobs",
    "value_loss",
]
