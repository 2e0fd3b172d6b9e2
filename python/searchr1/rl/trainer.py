"""The training loop: rollout -> reward -> advantages -> update -> sync -> log -> checkpoint.

:func:`train` runs a whole :class:`~searchr1.config.TrainConfig`. One step, top to bottom:

1. take the next ``batch_size`` questions; each is asked ``group_size`` times, with a
   group id unique over the whole run;
2. roll out every trajectory with search (:func:`searchr1.rollout.run_rollouts`);
3. score each response with the configured reward (and DAPO's overlong penalty); with
   dynamic sampling, drop the groups whose rewards are all equal and roll out more;
4. recompute the old log-probs with the actor, the reference's, and (PPO) the values;
5. advantages: GRPO/RLOO from the group's scores, GAE with the critic, or REINFORCE++;
6. updates with the policy loss (PPO-clip, GSPO or CISPO) over mini-batches,
   accumulating micro-batches, on the loss-mask tokens only (with ``state_masking``
   off, retrieved tokens get loss too);
7. hand the new weights to the engine (unless it generates from the actor itself),
   log the metrics, checkpoint.

Each is a method of :class:`Trainer`, called in that order by :meth:`Trainer.step`.
The engine sleeps from the end of the rollouts until the weights are synced.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from searchr1.config import TrainConfig
from searchr1.data import load_qa
from searchr1.evaluate import summarize
from searchr1.hub import local_model
from searchr1.packing import Trajectory, pack
from searchr1.retrieval.backend import open_backend
from searchr1.reward import exact_match, get_reward, overlong_penalty
from searchr1.rl import fsdp
from searchr1.rl.algos import (
    AdvantageInputs,
    advantage_estimator,
    compute_advantages,
    kl_penalty,
)
from searchr1.rl.checkpoint import latest_checkpoint, load_trainer, save_trainer
from searchr1.rl.dist import Dist
from searchr1.rl.lora import adapters_off, merged_weights, with_adapters
from searchr1.rl.metrics_log import MetricsLog
from searchr1.rl.modeling import ValueModel, response_logprobs, response_values
from searchr1.rl.update import micro_batches, ppo_update
from searchr1.rollout import RolloutResult, run_rollouts, tokenize_prompts
from searchr1.rollout.engines import EngineOptions, engine_kind
from searchr1.rollout.loop import TrajectoryStats

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


@dataclass
class _Turn:
    """One step's rollouts as the phases of :meth:`Trainer.step` fill them in."""

    examples: list[Any]
    #: ``[B * world]`` group id of every trajectory of the batch (all ranks).
    groups: torch.Tensor
    #: This rank's rows of the batch.
    mine: slice
    result: RolloutResult
    scores: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    #: The reward of each response before shaping, and its exact match.
    rewards: list[float] = field(default_factory=list)
    em: list[float] = field(default_factory=list)
    #: DAPO's overlong penalty of each response (when ``rl.overlong_buffer`` is set).
    penalties: list[float] | None = None
    #: What dynamic sampling did, for the log.
    sampling: dict[str, float] = field(default_factory=dict)
    kl_sums: torch.Tensor = field(default_factory=lambda: torch.zeros(2))


@dataclass
class _Row:
    """One trajectory of a turn with all that is known of it, as dynamic sampling moves
    rows between rounds and ranks."""

    group: int
    example: Any
    trajectory: Trajectory
    stats: TrajectoryStats
    response: str
    transcript: str
    score: float
    reward: float
    em: float
    penalty: float | None


def _shaping(penalties: list[float] | None) -> dict[str, float]:
    """What the overlong shaping did, for the log (empty when it is off)."""
    if penalties is None:
        return {}
    return {
        "overlong/penalized": float(np.mean([p < 0 for p in penalties])),
        "overlong/penalty": float(np.mean(penalties)),
    }


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - started


def _device(config: TrainConfig) -> str:
    if config.model.device != "auto":
        return config.model.device
    return "cuda" if torch.cuda.is_available() else "cpu"


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
        model_dir = local_model(config.model.path)  # never a download
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        auto: Any = AutoModelForCausalLM
        self.actor = auto.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True).to(
            self.device
        )
        if config.model.gradient_checkpointing:
            self.actor.gradient_checkpointing_enable()
        self.lora = config.model.lora_rank > 0
        if self.lora:
            # Seeded: every rank, and a run and its resume, start from the same adapters.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.run.seed)
                self.actor = with_adapters(self.actor, config.model)
            if config.model.gradient_checkpointing:
                self.actor.enable_input_require_grads()
        # The reference: a frozen copy, or with LoRA the actor with its adapters off.
        self.ref = None
        if rl.kl_coef > 0 and not self.lora:
            self.ref = copy.deepcopy(self.actor).eval().requires_grad_(False)
        self.critic: ValueModel | None = None
        if advantage_estimator(rl.algorithm).critic:
            self.critic = ValueModel.from_pretrained(model_dir).to(self.device)
            if config.model.gradient_checkpointing:
                self.critic.backbone.gradient_checkpointing_enable()  # type: ignore[operator]
        # FSDP2: the trained models are sharded; generation uses full weights (see fsdp.py).
        wanted = config.model.fsdp
        if wanted is None:
            self.fsdp = self.dist.world > 1 and self.device.type == "cuda"
        else:  # asked for: also on one torchrun rank (the multi-GPU code path on one GPU)
            self.fsdp = wanted and self.dist.joined
        if self.fsdp and self.lora:
            raise ValueError(
                "LoRA (model.lora_rank) trains on full replicas for now: set model.fsdp=false"
            )
        kind = engine_kind(config.model.engine)
        # An engine that generates from a module in this process gets the actor itself,
        # or under FSDP a full copy that is synced after each update.
        self.rollout_model = self.actor
        if self.fsdp and kind.from_module:
            self.rollout_model = copy.deepcopy(self.actor).eval().requires_grad_(False)
        if self.fsdp:
            for model in (self.actor, self.ref, self.critic):
                if model is not None:
                    fsdp.shard(model, self.device.type, self.dist.world)

        # --- rollouts: engine and retriever -------------------------------------------
        self.engine = kind.build(
            EngineOptions(
                model_path=config.model.path,
                module=self.rollout_model,
                tokenizer=self.tokenizer,
                max_model_len=config.rollout.max_length,
                gpu_memory_utilization=config.model.vllm_gpu_memory_utilization,
                sleep_mode=self.device.type == "cuda",
            )
        )
        self.retriever = self._retriever()
        self.reward_fn = get_reward(rl.reward)

        # --- data -------------------------------------------------------------------------
        self.train_data = load_qa(config.data.train_files)
        self.val_data = load_qa(config.data.val_files) if config.data.val_files else []
        if config.data.val_size is not None:
            self.val_data = self.val_data[: config.data.val_size]
        self.stream = DataStream(len(self.train_data), config.run.seed)

        # --- optimisation -----------------------------------------------------------------
        trained = [p for p in self.actor.parameters() if p.requires_grad]
        self.actor_opt = torch.optim.AdamW(trained, lr=rl.actor_lr, weight_decay=rl.weight_decay)
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
        if not (cfg.url or cfg.index):
            return None  # every search fails, and its observation says so
        return open_backend(
            cfg.index or None,
            cfg.url or None,
            mode=cfg.mode,
            timeout=cfg.timeout,
            retries=cfg.retries,
            deadline=cfg.deadline,
        )

    def _schedule(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        warmup = math.floor(self.config.rl.warmup_ratio * self.config.run.total_steps)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0
        )

    # --- one step -----------------------------------------------------------------------------

    def step(self) -> dict[str, float]:
        """One RL step, phase by phase; returns its metrics."""
        started = time.perf_counter()
        timings: dict[str, float] = {}
        with _timed(timings, "time/rollout"):
            turn = self._rollout()
            self._score(turn)
            if self.config.rl.dynamic_sampling:
                turn = self._keep_informative(turn)
        timings["time/retrieval"] = turn.result.search_seconds
        with _timed(timings, "time/forward_old"):
            batch = self._forward_passes(turn)
        self._advantages(turn, batch)
        with _timed(timings, "time/update"):
            stats = self._update(batch, self.step_no)
        self.actor_sched.step()
        if self.critic_sched is not None:
            self.critic_sched.step()
        with _timed(timings, "time/sync"):
            self._sync_engine()
        self.step_no += 1
        return self._metrics(turn, stats, {**timings, "time/step": time.perf_counter() - started})

    def _rollout(self, round_no: int = 0) -> _Turn:
        """The next ``batch_size`` questions, each asked ``group_size`` times (group ids
        unique over the run), rolled out with search. With several ranks, each takes its
        share (whole groups) of the same batch. ``round_no``: the extra rounds of dynamic
        sampling in this step sample with seeds of their own."""
        cfg, rl, step = self.config, self.config.rl, self.step_no
        picked = self.stream.take(rl.batch_size)
        everyone = [self.train_data[i] for i in picked for _ in range(rl.group_size)]
        groups = np.repeat(step * rl.batch_size + np.arange(rl.batch_size), rl.group_size)
        mine = self.dist.shard(len(everyone))
        examples = everyone[mine]
        self.actor.eval()
        prompts = tokenize_prompts(
            self.tokenizer, [e.question for e in examples], cfg.rollout.protocol
        )
        seed = cfg.run.seed * 1_000_003 + step + round_no * 7_919_000
        rollout_cfg = replace(cfg.rollout, seed=seed)
        self.engine.wake()
        result = run_rollouts(self.engine, self.retriever, prompts, rollout_cfg, mine.start)
        self.engine.sleep()  # the trainer's turn: the engine frees what it can
        return _Turn(examples, torch.from_numpy(groups).to(self.device), mine, result)

    def _score(self, turn: _Turn) -> None:
        """The configured reward of each response (with DAPO's overlong penalty when
        ``rl.overlong_buffer`` is set), and its exact match (logged)."""
        rl = self.config.rl
        pairs = list(zip(turn.result.responses, turn.examples, strict=True))
        turn.rewards = [self.reward_fn(r, e.golden_answers) for r, e in pairs]
        scores = turn.rewards
        if rl.overlong_buffer:
            cap = self.config.rollout.max_sampled_tokens
            sampled = turn.result.batch.loss_mask.sum(axis=1)
            turn.penalties = [
                overlong_penalty(int(n), cap, rl.overlong_buffer, rl.overlong_penalty)
                for n in sampled
            ]
            scores = [s + p for s, p in zip(scores, turn.penalties, strict=True)]
        turn.scores = torch.tensor(scores, dtype=torch.float32)
        turn.em = [exact_match(r, e.golden_answers) for r, e in pairs]

    def _keep_informative(self, turn: _Turn) -> _Turn:
        """DAPO's dynamic sampling: the groups whose rewards (before shaping) are all
        equal have no advantage to learn from, so they are dropped and more questions are
        rolled out, up to ``rl.dynamic_sampling_rounds`` more rounds, until ``batch_size``
        groups differ. Should the rounds run out first, the batch is filled with dropped
        groups (which move nothing under GRPO and RLOO). The rows are then shared out
        over the ranks again, whole groups each."""
        rl = self.config.rl
        informative: list[list[_Row]] = []
        flat: list[list[_Row]] = []
        generate = search = 0.0
        first_share = 0.0
        round_no = 0
        for round_no in range(rl.dynamic_sampling_rounds + 1):
            if round_no:
                turn = self._rollout(round_no)
                self._score(turn)
            generate += turn.result.generate_seconds
            search += turn.result.search_seconds
            groups = self._groups_everywhere(turn)
            before = len(informative)
            for group in groups:
                differs = len({row.reward for row in group}) > 1
                (informative if differs else flat).append(group)
            if round_no == 0:
                first_share = (len(informative) - before) / max(len(groups), 1)
            if len(informative) >= rl.batch_size:
                break
        chosen = (informative + flat)[: rl.batch_size]
        base = self.step_no * rl.batch_size
        rows = [replace(row, group=base + i) for i, g in enumerate(chosen) for row in g]
        mine = self.dist.shard(len(rows))
        own = rows[mine]
        trajectories = [row.trajectory for row in own]
        result = RolloutResult(
            batch=pack(trajectories, pad_id=int(self.tokenizer.pad_token_id or 0)),
            trajectories=trajectories,
            stats=[row.stats for row in own],
            responses=[row.response for row in own],
            transcripts=[row.transcript for row in own],
            generate_seconds=generate,
            search_seconds=search,
        )
        groups_ids = torch.tensor([row.group for row in rows], device=self.device)
        out = _Turn([row.example for row in own], groups_ids, mine, result)
        out.scores = torch.tensor([row.score for row in own], dtype=torch.float32)
        out.rewards = [row.reward for row in own]
        out.em = [row.em for row in own]
        if turn.penalties is not None:
            out.penalties = [row.penalty or 0.0 for row in own]
        out.sampling = {
            "dapo/informative": first_share,
            "dapo/rounds": float(round_no + 1),
            "dapo/filled": max(rl.batch_size - len(informative), 0) / rl.batch_size,
        }
        return out

    def _groups_everywhere(self, turn: _Turn) -> list[list[_Row]]:
        """Every rank's rows of ``turn``, grouped, in batch order."""
        result = turn.result
        ids = turn.groups[turn.mine].tolist()
        penalties: list[float | None] = [*turn.penalties] if turn.penalties else [None] * len(ids)
        mine = [
            _Row(*fields)
            for fields in zip(
                ids,
                turn.examples,
                result.trajectories,
                result.stats,
                result.responses,
                result.transcripts,
                turn.scores.tolist(),
                turn.rewards,
                turn.em,
                penalties,
                strict=True,
            )
        ]
        grouped: dict[int, list[_Row]] = {}
        for part in self.dist.gather_objects(mine):
            for row in part:
                grouped.setdefault(row.group, []).append(row)
        return list(grouped.values())

    def _forward_passes(self, turn: _Turn) -> dict[str, torch.Tensor]:
        """The batch tensors, with the old log-probs (actor), the reference's and the
        values (no gradients). Every rank packs to the same shape, so that the batch can
        be gathered for the advantages."""
        cfg, rl = self.config, self.config.rl
        packed = turn.result.batch
        if self.dist.world > 1:
            packed = pack(
                turn.result.trajectories,
                max_prompt_len=self.dist.max_int(packed.prompt_len),
                max_response_len=self.dist.max_int(packed.response_len),
                pad_id=int(self.tokenizer.pad_token_id or 0),
            )
        batch = packed.to_torch(self.device)
        response_mask = batch["attention_mask"][:, -batch["loss_mask"].shape[1] :].float()
        batch["mask"] = batch["loss_mask"] if rl.state_masking else response_mask
        with torch.no_grad(), self._autocast():
            rows = torch.arange(len(turn.examples), device=self.device)
            old, ref, values = [], [], []
            for micro in micro_batches(batch, rows, rl.micro_batch_size):
                old.append(response_logprobs(self.actor, micro, cfg.rollout.temperature)[0])
                if self.ref is not None:
                    ref.append(response_logprobs(self.ref, micro, cfg.rollout.temperature)[0])
                elif self.lora and rl.kl_coef > 0:
                    with adapters_off(self.actor):
                        logprobs = response_logprobs(self.actor, micro, cfg.rollout.temperature)
                    ref.append(logprobs[0])
                if self.critic is not None:
                    values.append(response_values(self.critic, micro))
        batch["old_logprobs"] = torch.cat(old).float()
        if ref:
            batch["ref_logprobs"] = torch.cat(ref).float()
        if values:
            batch["values"] = torch.cat(values).float()
        return batch

    def _advantages(self, turn: _Turn, batch: dict[str, torch.Tensor]) -> None:
        """Advantages (and the critic's returns) on the whole batch, gathered from every
        rank, then this rank's rows. The outcome reward sits on the last token the policy
        sampled (the packer's ``last_index``); with ``kl_in_reward`` the KL penalty is on
        every sampled token. Also sums the KL to the reference for the log."""
        rl, mask = self.config.rl, batch["mask"]
        token_rewards = torch.zeros_like(mask)
        last = batch["last_index"]
        has = last >= 0
        token_rewards[has, last[has]] = turn.scores.to(self.device)[has]
        turn.kl_sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # sum, tokens
        if "ref_logprobs" in batch:
            kl_tokens = kl_penalty(batch["old_logprobs"], batch["ref_logprobs"], "k1")
            turn.kl_sums += torch.stack([(kl_tokens * mask).sum(), mask.sum()]).double()
            if rl.kl_in_reward:
                token_rewards = token_rewards - rl.kl_coef * kl_tokens * mask
        gather = self.dist.gather_rows
        advantages, returns = compute_advantages(
            rl.algorithm,
            AdvantageInputs(
                scores=gather(turn.scores.to(self.device)),
                group_ids=turn.groups,
                mask=gather(mask),
                token_rewards=gather(token_rewards),
                values=gather(batch["values"]) if "values" in batch else None,
                gamma=rl.gamma,
                lam=rl.lam,
                norm_by_std=rl.norm_adv_by_std,
            ),
        )
        batch["advantages"] = advantages[turn.mine]
        if returns is not None:
            batch["returns"] = returns[turn.mine]

    def _metrics(
        self, turn: _Turn, stats: dict[str, float], timings: dict[str, float]
    ) -> dict[str, float]:
        """The step's metrics: rollout means over every rank, losses, KL, timings."""
        rollout = self._mean_over_ranks(
            {
                **turn.result.metrics(),
                "reward": float(turn.scores.mean()),
                "em": float(np.mean(turn.em)),
                **_shaping(turn.penalties),
            }
        )
        kl_sum, kl_tokens_n = self.dist.sum_(turn.kl_sums).tolist()
        keys = ["reward", "em", "searches", "turns", "valid_actions", "finished"]
        keys += ["search_failures", "response_length", *_shaping(turn.penalties)]
        return {
            "step": float(self.step_no),
            **{k: rollout[k] for k in keys},
            "kl": kl_sum / max(kl_tokens_n, 1.0),
            "lr": float(self.actor_sched.get_last_lr()[0]),
            **turn.sampling,
            **stats,
            **timings,
        }

    def _sync_engine(self) -> None:
        """Hands the actor's new weights to the engine, unless it generates from them."""
        self.engine.wake()
        if self.engine.shares_weights(self.actor):
            return
        if self.lora:
            weights = merged_weights(self.actor)
        else:
            weights = fsdp.full_state_dict(self.actor) if self.fsdp else self.actor.state_dict()
        self.engine.load_weights(weights.items())

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
        return ppo_update(self, batch, step)

    # --- validation -------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """Greedy rollouts on the validation set: EM per data source and overall."""
        if not self.val_data:
            return {}
        self.actor.eval()
        self.engine.wake()
        mine = self.val_data[self.dist.rank :: self.dist.world]
        prompts = tokenize_prompts(
            self.tokenizer, [e.question for e in mine], self.config.rollout.protocol
        )
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

    def save(self) -> Path:
        """Writes a checkpoint (rank 0, from full weights; every rank takes part)."""
        return save_trainer(self)

    def load(self, path: Path) -> None:
        """Restores a checkpoint written by :meth:`save`."""
        load_trainer(self, path)


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
