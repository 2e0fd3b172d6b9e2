"""The training loop: rollout -> reward -> advantages -> update -> sync -> log -> checkpoint.

:func:`train` runs a whole :class:`~searchr1.config.TrainConfig`. One step, top to bottom:

1. take the next ``batch_size`` questions; each is asked ``group_size`` times, with a
   group id unique over the whole run;
2. roll out every trajectory with search (:func:`searchr1.rollout.run_rollouts`);
3. score each response with the configured reward;
4. recompute the old log-probs with the actor, the reference's, and (PPO) the values;
5. advantages: GRPO/RLOO from the group's scores, GAE with the critic, or REINFORCE++;
6. PPO-clip updates over mini-batches, accumulating micro-batches, on the loss-mask
   tokens only (with ``state_masking`` off, retrieved tokens get loss too);
7. push the new weights to the engine (vLLM), log the metrics, checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from searchr1.config import TrainConfig
from searchr1.data import load_qa
from searchr1.evaluate import summarize
from searchr1.packing import pack
from searchr1.reward import exact_match, get_reward
from searchr1.rl import fsdp
from searchr1.rl.algos import (
    gae_advantages,
    grpo_advantages,
    kl_penalty,
    masked_mean,
    ppo_policy_loss,
    reinforce_pp_advantages,
    rloo_advantages,
    value_loss,
)
from searchr1.rl.checkpoint import latest_checkpoint, load_rng_state, rng_state, save_checkpoint
from searchr1.rl.dist import Dist
from searchr1.rl.modeling import ValueModel, response_logprobs, response_values
from searchr1.rollout import HFEngine, run_rollouts, tokenize_prompts

__all__ = ["DataStream", "Trainer", "train"]


@dataclass
class DataStream:
    """The questions in a seeded order per epoch; its position is part of a checkpoint."""

    size: int
    seed: int
    epoch: int = 0
    position: int = 0

    def take(self, n: int) -> list[int]:
        """The next ``n`` example indices, crossing into new epochs as needed."""
        out: list[int] = []
        while len(out) < n:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
            chunk = order[self.position : self.position + n - len(out)]
            out.extend(int(i) for i in chunk)
            self.position += len(chunk)
            if self.position >= self.size:
                self.epoch, self.position = self.epoch + 1, 0
        return out


def _backward(loss: torch.Tensor) -> None:
    loss.backward()  # type: ignore[no-untyped-call]


def _scalar(x: Any) -> float:
    if hasattr(x, "full_tensor"):  # a DTensor (FSDP): its value over all shards
        x = x.full_tensor()
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def _device(config: TrainConfig) -> str:
    if config.model.device != "auto":
        return config.model.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _micro_batches(
    batch: dict[str, torch.Tensor], idx: torch.Tensor, size: int
) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, len(idx), size):
        rows = idx[start : start + size]
        yield {k: v[rows] for k, v in batch.items()}


class Trainer:
    """Holds the models, optimizers and data of a run; :meth:`step` is one RL step."""

    def __init__(self, config: TrainConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        rl = config.rl
        if not config.model.path:
            raise ValueError("model.path is not set")
        if not config.data.train_files:
            raise ValueError("data.train_files is empty")
        device = _device(config)
        self.dist = Dist.init(device)
        if device == "cuda":
            device = f"cuda:{self.dist.local_rank}"
        self.device = torch.device(device)
        self.autocast = self.device.type == "cuda"
        total = rl.batch_size * rl.group_size
        if total % self.dist.world or (rl.mini_batch_size * rl.group_size) % self.dist.world:
            raise ValueError(
                f"rl.batch_size x group_size ({total}) and rl.mini_batch_size x group_size "
                f"must split evenly over {self.dist.world} ranks"
            )
        self.out = Path(config.run.output_dir)

        # --- models -------------------------------------------------------------------
        self.tokenizer = AutoTokenizer.from_pretrained(config.model.path)
        auto: Any = AutoModelForCausalLM
        self.actor = auto.from_pretrained(config.model.path, dtype=torch.float32).to(self.device)
        if config.model.gradient_checkpointing:
            self.actor.gradient_checkpointing_enable()
        self.ref = None
        if rl.kl_coef > 0:
            self.ref = copy.deepcopy(self.actor).eval().requires_grad_(False)
        self.critic: ValueModel | None = None
        if rl.algorithm == "ppo":
            self.critic = ValueModel.from_pretrained(config.model.path).to(self.device)
            if config.model.gradient_checkpointing:
                self.critic.backbone.gradient_checkpointing_enable()  # type: ignore[operator]
        # FSDP2: the trained models are sharded; generation uses full weights (see fsdp.py).
        wanted = config.model.fsdp
        if wanted is None:
            self.fsdp = self.dist.world > 1 and self.device.type == "cuda"
        else:  # asked for: also on one torchrun rank (the multi-GPU code path on one GPU)
            self.fsdp = wanted and self.dist.joined
        self.rollout_model = self.actor
        if self.fsdp:
            if config.model.engine == "hf":
                self.rollout_model = copy.deepcopy(self.actor).eval().requires_grad_(False)
            for model in (self.actor, self.ref, self.critic):
                if model is not None:
                    fsdp.shard(model, self.device.type, self.dist.world)

        # --- rollouts: engine and retriever -------------------------------------------
        self.engine: Any
        if config.model.engine == "vllm":
            from searchr1.rollout.vllm import VLLMEngine

            self.engine = VLLMEngine(
                config.model.path,
                max_model_len=config.rollout.max_length,
                gpu_memory_utilization=config.model.vllm_gpu_memory_utilization,
                enable_sleep_mode=self.device.type == "cuda",
            )
        else:
            # Without FSDP the engine samples from the very module being trained.
            self.engine = HFEngine(self.rollout_model, self.tokenizer)
        self.retriever = self._retriever()
        self.reward_fn = get_reward(rl.reward)

        # --- data -------------------------------------------------------------------------
        self.train_data = load_qa(config.data.train_files)
        self.val_data = load_qa(config.data.val_files) if config.data.val_files else []
        if config.data.val_size is not None:
            self.val_data = self.val_data[: config.data.val_size]
        self.stream = DataStream(len(self.train_data), config.run.seed)

        # --- optimisation -----------------------------------------------------------------
        self.actor_opt = torch.optim.AdamW(
            self.actor.parameters(), lr=rl.actor_lr, weight_decay=rl.weight_decay
        )
        self.actor_sched = self._schedule(self.actor_opt)
        self.critic_opt = self.critic_sched = None
        if self.critic is not None:
            self.critic_opt = torch.optim.AdamW(
                self.critic.parameters(), lr=rl.critic_lr, weight_decay=rl.weight_decay
            )
            self.critic_sched = self._schedule(self.critic_opt)
        self.step_no = 0

    def _retriever(self) -> Any:
        cfg = self.config.retrieval
        if cfg.url:
            from searchr1.retrieval.client import RemoteRetriever

            return RemoteRetriever(cfg.url)
        if cfg.index:
            from searchr1.retrieval import Retriever

            return Retriever.open(cfg.index, mode=cfg.mode)
        return None

    def _schedule(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        warmup = math.floor(self.config.rl.warmup_ratio * self.config.run.total_steps)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0
        )

    # --- one step -----------------------------------------------------------------------------

    def step(self) -> dict[str, float]:
        """One RL step; returns its metrics."""
        cfg, rl = self.config, self.config.rl
        step = self.step_no
        timings: dict[str, float] = {}
        started = time.perf_counter()

        # 1. Questions, each asked group_size times; group ids unique across the run.
        #    With several ranks, each takes its share (whole groups) of the same batch.
        picked = self.stream.take(rl.batch_size)
        everyone = [self.train_data[i] for i in picked for _ in range(rl.group_size)]
        all_groups = np.repeat(step * rl.batch_size + np.arange(rl.batch_size), rl.group_size)
        mine = self.dist.shard(len(everyone))
        examples = everyone[mine]

        # 2. Rollouts with search.
        t = time.perf_counter()
        self.actor.eval()
        prompts = tokenize_prompts(self.tokenizer, [e.question for e in examples])
        rollout_cfg = replace(cfg.rollout, seed=cfg.run.seed * 1_000_003 + step)
        result = run_rollouts(self.engine, self.retriever, prompts, rollout_cfg)
        timings["time/rollout"] = time.perf_counter() - t
        timings["time/retrieval"] = result.search_seconds

        # 3. Rewards.
        scores = torch.tensor(
            [
                self.reward_fn(r, e.golden_answers)
                for r, e in zip(result.responses, examples, strict=True)
            ],
            dtype=torch.float32,
        )
        em = [
            exact_match(r, e.golden_answers)
            for r, e in zip(result.responses, examples, strict=True)
        ]

        # 4. Old log-probs, reference log-probs, values (no gradients). Every rank packs
        #    to the same shape, so that the batch can be gathered for the advantages.
        t = time.perf_counter()
        packed = result.batch
        if self.dist.world > 1:
            packed = pack(
                result.trajectories,
                max_prompt_len=self.dist.max_int(packed.prompt_len),
                max_response_len=self.dist.max_int(packed.response_len),
                pad_id=int(self.tokenizer.pad_token_id or 0),
            )
        batch = packed.to_torch(self.device)
        response_mask = batch["attention_mask"][:, -batch["loss_mask"].shape[1] :].float()
        mask = batch["loss_mask"] if rl.state_masking else response_mask
        batch["mask"] = mask
        with torch.no_grad(), self._autocast():
            rows = torch.arange(len(examples), device=self.device)
            old, ref, values = [], [], []
            for micro in _micro_batches(batch, rows, rl.micro_batch_size):
                old.append(response_logprobs(self.actor, micro, cfg.rollout.temperature)[0])
                if self.ref is not None:
                    ref.append(response_logprobs(self.ref, micro, cfg.rollout.temperature)[0])
                if self.critic is not None:
                    values.append(response_values(self.critic, micro))
        batch["old_logprobs"] = torch.cat(old).float()
        if ref:
            batch["ref_logprobs"] = torch.cat(ref).float()
        if values:
            batch["values"] = torch.cat(values).float()
        timings["time/forward_old"] = time.perf_counter() - t

        # 5. Advantages, on the whole batch (gathered from every rank), then this rank's
        #    rows. The outcome reward sits on the last token the policy sampled.
        token_rewards = torch.zeros_like(mask)
        positions = torch.arange(mask.shape[1], device=self.device).expand_as(mask)
        last = torch.where(mask > 0, positions, -1).max(dim=1).values
        has = last >= 0
        token_rewards[has, last[has]] = scores.to(self.device)[has]
        kl_sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # sum, tokens
        if "ref_logprobs" in batch:
            kl_tokens = kl_penalty(batch["old_logprobs"], batch["ref_logprobs"], "k1")
            kl_sums += torch.stack([(kl_tokens * mask).sum(), mask.sum()]).double()
            if rl.kl_in_reward:
                token_rewards = token_rewards - rl.kl_coef * kl_tokens * mask
        gather = self.dist.gather_rows
        all_mask, all_scores = gather(mask), gather(scores.to(self.device))
        groups = torch.from_numpy(all_groups).to(self.device)
        if rl.algorithm == "grpo":
            advantages = grpo_advantages(all_scores, groups, all_mask, rl.norm_adv_by_std)
        elif rl.algorithm == "rloo":
            advantages = rloo_advantages(all_scores, groups, all_mask)
        elif rl.algorithm == "reinforce++":
            advantages = reinforce_pp_advantages(gather(token_rewards), all_mask, rl.gamma)
        else:
            advantages, returns = gae_advantages(
                gather(token_rewards), gather(batch["values"]), all_mask, rl.gamma, rl.lam
            )
            batch["returns"] = returns[mine]
        batch["advantages"] = advantages[mine]

        # 6. Updates: ppo_epochs x mini-batches, accumulating micro-batches.
        t = time.perf_counter()
        stats = self._update(batch, step)
        timings["time/update"] = time.perf_counter() - t
        self.actor_sched.step()
        if self.critic_sched is not None:
            self.critic_sched.step()

        # 7. Weights to the engine (without FSDP the HF engine shares the actor's).
        t = time.perf_counter()
        self._sync_engine()
        timings["time/sync"] = time.perf_counter() - t

        self.step_no += 1
        rollout = self._mean_over_ranks(
            {**result.metrics(), "reward": float(scores.mean()), "em": float(np.mean(em))}
        )
        kl_sum, kl_tokens_n = self.dist.sum_(kl_sums).tolist()
        kl_value = kl_sum / max(kl_tokens_n, 1.0)
        metrics = {
            "step": float(self.step_no),
            "reward": rollout["reward"],
            "em": rollout["em"],
            "searches": rollout["searches"],
            "turns": rollout["turns"],
            "valid_actions": rollout["valid_actions"],
            "finished": rollout["finished"],
            "search_failures": rollout["search_failures"],
            "response_length": rollout["response_length"],
            "kl": kl_value,
            "lr": float(self.actor_sched.get_last_lr()[0]),
            **stats,
            **timings,
            "time/step": time.perf_counter() - started,
        }
        return metrics

    def _sync_engine(self) -> None:
        """Pushes the actor's weights to the rollout engine, where it has its own."""
        if self.config.model.engine == "vllm":
            weights = fsdp.full_state_dict(self.actor) if self.fsdp else self.actor.state_dict()
            self.engine.load_weights(weights.items())
        elif self.fsdp:
            self.rollout_model.load_state_dict(fsdp.full_state_dict(self.actor))

    def _mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """The mean of each value over ranks (each rank holds as many trajectories)."""
        return {k: v / self.dist.world for k, v in self.dist.sum_values(values).items()}

    def layout(self) -> str:
        """Where the step runs, in words: ranks, device, sharding, precision."""
        ranks = f"{self.dist.world} torchrun rank{'s' if self.dist.world > 1 else ''}"
        where = ranks if self.dist.joined else "one process"
        shards = "FSDP2 shards" if self.fsdp else "full weights"
        precision = "bf16 autocast" if self.autocast else "fp32"
        engine = f"{self.config.model.engine} engine"
        return f"{where} on {self.device.type}, {shards}, {precision}, {engine}"

    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast)

    def _update(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        rl = self.config.rl
        n = batch["input_ids"].shape[0]
        mini = (rl.mini_batch_size * rl.group_size) // self.dist.world or n
        sums: dict[str, float] = defaultdict(float)
        count = 0
        generator = torch.Generator().manual_seed(self.config.run.seed * 7919 + step)
        self.actor.train()
        if self.critic is not None:
            self.critic.train()
        for _ in range(rl.ppo_epochs):
            order = torch.randperm(n, generator=generator).to(self.device)
            for start in range(0, n, mini):
                rows = order[start : start + mini]
                # Each micro-batch weighs its share of the tokens of all ranks' mini-batch.
                tokens = self.dist.sum_(batch["mask"][rows].sum()).clamp(min=1)
                self.actor_opt.zero_grad(set_to_none=True)
                if self.critic_opt is not None:
                    self.critic_opt.zero_grad(set_to_none=True)
                for micro in _micro_batches(batch, rows, rl.micro_batch_size):
                    weight = micro["mask"].sum() / tokens
                    with self._autocast():
                        logprobs, entropy = response_logprobs(
                            self.actor, micro, self.config.rollout.temperature, with_entropy=True
                        )
                    logprobs = logprobs.float()
                    pg_loss, pg_stats = ppo_policy_loss(
                        logprobs,
                        micro["old_logprobs"],
                        micro["advantages"],
                        micro["mask"],
                        clip=rl.clip,
                        dual_clip=rl.dual_clip,
                    )
                    assert entropy is not None
                    ent = masked_mean(entropy.float(), micro["mask"])
                    loss = pg_loss - rl.entropy_coef * ent
                    if "ref_logprobs" in micro and not rl.kl_in_reward:
                        kl = masked_mean(
                            kl_penalty(logprobs, micro["ref_logprobs"], rl.kl_estimator),
                            micro["mask"],
                        )
                        loss = loss + rl.kl_coef * kl
                        sums["kl_loss"] += _scalar(kl) * _scalar(weight)
                    _backward(loss * weight)
                    sums["pg_loss"] += _scalar(pg_loss) * _scalar(weight)
                    sums["entropy"] += _scalar(ent) * _scalar(weight)
                    for key, value in pg_stats.items():
                        sums[key] += _scalar(value) * _scalar(weight)
                    if self.critic is not None:
                        with self._autocast():
                            values = response_values(self.critic, micro)
                        v_loss, _ = value_loss(
                            values.float(),
                            micro["values"],
                            micro["returns"],
                            micro["mask"],
                            rl.value_clip,
                        )
                        _backward(v_loss * weight)
                        sums["value_loss"] += _scalar(v_loss) * _scalar(weight)
                if not self.fsdp:  # FSDP has reduce-scattered (summed) them already
                    self.dist.sum_grads(self.actor.parameters())
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    self.actor.parameters(), rl.max_grad_norm
                )
                sums["grad_norm"] += _scalar(grad_norm)
                self.actor_opt.step()
                if self.critic is not None and self.critic_opt is not None:
                    if not self.fsdp:
                        self.dist.sum_grads(self.critic.parameters())
                    torch.nn.utils.clip_grad_norm_(self.critic.parameters(), rl.max_grad_norm)
                    self.critic_opt.step()
                count += 1
        self.actor.eval()
        # Losses were weighted by global tokens: their sum over ranks is the batch's.
        summed = self.dist.sum_values({k: v for k, v in sums.items() if k != "grad_norm"})
        out = {k: v / count for k, v in summed.items()}
        out["grad_norm"] = sums["grad_norm"] / count
        return out

    # --- validation -------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """Greedy rollouts on the validation set: EM per data source and overall."""
        if not self.val_data:
            return {}
        self.actor.eval()
        mine = self.val_data[self.dist.rank :: self.dist.world]
        prompts = tokenize_prompts(self.tokenizer, [e.question for e in mine])
        rollout_cfg = replace(self.config.rollout, temperature=0.0, seed=None)
        result = run_rollouts(self.engine, self.retriever, prompts, rollout_cfg)
        parts = self.dist.gather_objects((result.responses, mine, result.stats))
        responses = [r for part in parts for r in part[0]]
        examples = [e for part in parts for e in part[1]]
        stats = [s for part in parts for s in part[2]]
        report = summarize(responses, examples, stats)
        out = {}
        for source, m in report.metrics.items():
            for key in ("em", "f1", "searches"):
                out[
                    f"val/{key}"
                    if source == "all" or len(report.metrics) == 1
                    else f"val/{key}/{source}"
                ] = m[key]
        return out

    # --- checkpoints ------------------------------------------------------------------------

    def _optimizer_state(self, model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return fsdp.full_optimizer_state(model, optimizer) if self.fsdp else optimizer.state_dict()

    def state(self) -> dict[str, Any]:
        """Everything but the weights that a resume needs (a collective under FSDP)."""
        state = {
            "step": self.step_no,
            "stream": asdict(self.stream),
            "actor_opt": self._optimizer_state(self.actor, self.actor_opt),
            "actor_sched": self.actor_sched.state_dict(),
            "rng": rng_state(),
        }
        if self.critic_opt is not None and self.critic_sched is not None:
            state["critic_opt"] = self._optimizer_state(self.critic, self.critic_opt)
            state["critic_sched"] = self.critic_sched.state_dict()
        return state

    def save(self) -> Path:
        """Writes a checkpoint (rank 0, from full weights; every rank takes part)."""
        root = self.out / "checkpoints"
        path = root / f"step_{self.step_no:06d}"
        state = self.state()
        # Under FSDP the HF engine's copy holds the full actor (synced after each update);
        # with vLLM the rollout model is the sharded actor, whose full weights are gathered.
        actor_weights = critic_weights = None
        if self.fsdp and self.rollout_model is self.actor:
            actor_weights = fsdp.full_state_dict(self.actor, everywhere=False)
        if self.fsdp and self.critic is not None:
            critic_weights = fsdp.full_state_dict(self.critic, everywhere=False)
        if self.dist.is_main:
            path = save_checkpoint(
                root,
                self.step_no,
                self.rollout_model,
                self.tokenizer,
                state,
                critic=self.critic,
                keep=self.config.run.keep_checkpoints,
                actor_weights=actor_weights,
                critic_weights=critic_weights,
            )
        self.dist.barrier()
        return path

    def load(self, path: Path) -> None:
        """Restores a checkpoint written by :meth:`save`."""
        from safetensors.torch import load_file

        weights: dict[str, torch.Tensor] = {}
        for shard in sorted((path / "actor").glob("*.safetensors")):
            weights.update(load_file(str(shard), device=str(self.device)))
        expected = set(self.rollout_model.state_dict())
        tied = getattr(self.rollout_model.config, "tie_word_embeddings", False)
        embed = weights.get("model.embed_tokens.weight")
        if tied and "lm_head.weight" in expected - set(weights) and embed is not None:
            weights["lm_head.weight"] = embed  # a tied head is saved once, as the embedding
        missing = sorted(expected - set(weights))
        unexpected = sorted(set(weights) - expected)
        if missing or unexpected:
            raise ValueError(f"{path}: checkpoint does not fit the model ({missing or unexpected})")
        self._load_weights(self.actor, weights)
        state = torch.load(path / "state.pt", weights_only=False, map_location=self.device)
        if self.critic is not None:
            loaded = ValueModel.from_pretrained(path / "critic").to(self.device)
            self._load_weights(self.critic, loaded.state_dict())
        self._load_optimizer(self.actor, self.actor_opt, state["actor_opt"])
        self.actor_sched.load_state_dict(state["actor_sched"])
        if self.critic_opt is not None and self.critic_sched is not None:
            self._load_optimizer(self.critic, self.critic_opt, state["critic_opt"])
            self.critic_sched.load_state_dict(state["critic_sched"])
        self.stream = DataStream(**state["stream"])
        self.step_no = int(state["step"])
        load_rng_state(state["rng"])
        self._sync_engine()

    def _load_weights(self, model: Any, weights: dict[str, torch.Tensor]) -> None:
        if self.fsdp:
            fsdp.load_full_state_dict(model, weights)
        else:
            model.load_state_dict(weights)

    def _load_optimizer(
        self, model: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        if self.fsdp:
            fsdp.load_full_optimizer_state(model, optimizer, state)
        else:
            optimizer.load_state_dict(state)


class MetricsLog:
    """Metrics to ``metrics.jsonl`` (and TensorBoard, wandb when present)."""

    def __init__(self, config: TrainConfig, resume_step: int) -> None:
        self.path = Path(config.run.output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            # Steps logged after the checkpoint we resume from were lost with the crash.
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.tb: Any = None
        if config.run.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                pass
            else:
                # On a resume, TensorBoard drops what was logged after the checkpoint.
                self.tb = SummaryWriter(
                    str(Path(config.run.output_dir) / "tensorboard"),
                    purge_step=resume_step + 1 if resume_step else None,
                )
        self.wandb: Any = None
        if config.run.wandb_project:
            try:
                import wandb  # type: ignore[import-not-found, unused-ignore]
            except ImportError:
                pass
            else:
                self.wandb = wandb.init(project=config.run.wandb_project, config=config.to_dict())

    def write(self, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for key, value in metrics.items():
                if key != "step":  # the x axis already
                    self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Runs the whole config; returns the final checkpoint.

    ``resume``: continue from the newest checkpoint in ``run.output_dir`` (exactly: the
    same metrics as a run that never stopped).
    """
    from tqdm.auto import tqdm

    out = Path(config.run.output_dir)
    trainer = Trainer(config)
    main = trainer.dist.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config.to_yaml())
    if resume:
        path = latest_checkpoint(out / "checkpoints")
        if path is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {out / 'checkpoints'}")
        trainer.load(path)
    log = MetricsLog(config, trainer.step_no) if main else None
    run = config.run
    if main:
        print(f"train: {trainer.layout()}", file=sys.stderr)
    bar = tqdm(
        total=run.total_steps,
        initial=trainer.step_no,
        desc="train",
        disable=not (run.progress and main),
    )
    last = None
    try:
        while trainer.step_no < run.total_steps:
            metrics = trainer.step()
            step = trainer.step_no
            if run.eval_every and step % run.eval_every == 0:
                metrics.update(trainer.validate())
            if log is not None:
                log.write(step, metrics)
            bar.update(1)
            bar.set_postfix(
                reward=f"{metrics['reward']:.3f}",
                em=f"{metrics['em']:.3f}",
                search=f"{metrics['searches']:.2f}",
                len=f"{metrics['response_length']:.0f}",
                kl=f"{metrics['kl']:.4f}",
                ent=f"{metrics.get('entropy', 0.0):.3f}",
            )
            if (run.save_every and step % run.save_every == 0) or step == run.total_steps:
                last = trainer.save()
        if last is None:
            last = trainer.save()
    finally:
        bar.close()
        if log is not None:
            log.close()
        trainer.dist.close()
    return last
