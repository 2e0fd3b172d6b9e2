"""Run configuration: one flat dataclass per concern, read from YAML, overridable.

A YAML file has one section per dataclass (``model``, ``data``, ``retrieval``,
``rollout``, ``rl``, ``run``), each a flat mapping of its fields. The command line
changes single fields with ``--set section.field=value`` (the value read as YAML).
Unknown sections or fields, and values of the wrong type, are errors that name the
file and the field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from searchr1.rollout.loop import RolloutConfig

__all__ = [
    "DataConfig",
    "ModelConfig",
    "RLConfig",
    "RetrievalConfig",
    "RunConfig",
    "TrainConfig",
]

T = TypeVar("T")


@dataclass(frozen=True)
class ModelConfig:
    """The policy model and how it generates."""

    path: str = field(default="", metadata={"help": "model directory (transformers format)"})
    engine: str = field(
        default="hf", metadata={"help": "rollout engine: hf (transformers) or vllm"}
    )
    device: str = field(default="auto", metadata={"help": "cpu, cuda, or auto"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on CUDA, else f32)"})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "trade compute for memory in backward"}
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.4, metadata={"help": "share of the GPU vLLM may take when colocated"}
    )
    fsdp: bool | None = field(
        default=None,
        metadata={
            "help": "shard weights, gradients and optimizer state over torchrun ranks "
            "with FSDP2 (null: on CUDA with more than one rank; true: under torchrun, "
            "one rank included; false: full replicas)"
        },
    )

    lora_rank: int = field(
        default=0, metadata={"help": "rank of LoRA adapters on the actor (0: train every weight)"}
    )
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scale numerator (alpha)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    lora_targets: str = field(
        default="all-linear",
        metadata={"help": "modules with adapters: all-linear, or names (q_proj,v_proj)"},
    )

    def __post_init__(self) -> None:
        from searchr1.rollout.engines import ENGINES

        _known("model.engine", self.engine, ENGINES)
        if self.lora_rank < 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError("model.lora_rank must be >= 0 and model.lora_dropout in [0, 1)")


@dataclass(frozen=True)
class DataConfig:
    """Question-answer files (JSONL rows with question and golden_answers)."""

    train_files: list[str] = field(default_factory=list, metadata={"help": "training QA files"})
    val_files: list[str] = field(default_factory=list, metadata={"help": "validation QA files"})
    val_size: int | None = field(
        default=None, metadata={"help": "validate on at most this many questions"}
    )


@dataclass(frozen=True)
class RetrievalConfig:
    """Where searches go: an index directory (in-process) or a server URL."""

    index: str | None = field(default=None, metadata={"help": "index directory"})
    url: str | None = field(default=None, metadata={"help": "retrieval server URL"})
    mode: Literal["bm25", "dense", "hybrid"] = field(
        default="bm25", metadata={"help": "search mode of an in-process index"}
    )
    timeout: float = field(
        default=60.0, metadata={"help": "seconds one attempt at the server may wait (url)"}
    )
    retries: int = field(
        default=3,
        metadata={"help": "retries of a transient failure: connection, timeout, 429/502/503/504"},
    )
    deadline: float = field(
        default=120.0,
        metadata={"help": "seconds one search may take over all its attempts (url)"},
    )

    def __post_init__(self) -> None:
        if self.index and self.url:
            raise ValueError("give retrieval.index or retrieval.url, not both")
        if self.timeout <= 0 or self.deadline <= 0 or self.retries < 0:
            raise ValueError(
                "retrieval.timeout and retrieval.deadline must be > 0, retrieval.retries >= 0"
            )


@dataclass(frozen=True)
class RLConfig:
    """The algorithm and its optimisation (Search-R1's defaults)."""

    algorithm: str = field(
        default="grpo", metadata={"help": "grpo, ppo (GAE with a critic), rloo, reinforce++"}
    )
    group_size: int = field(default=5, metadata={"help": "responses per prompt (GRPO, RLOO)"})
    batch_size: int = field(default=512, metadata={"help": "prompts per step"})
    mini_batch_size: int = field(
        default=256,
        metadata={"help": "prompts per optimizer step, with their groups (0: the whole batch)"},
    )
    micro_batch_size: int = field(
        default=8, metadata={"help": "trajectories per forward/backward, per rank (accumulated)"}
    )
    ppo_epochs: int = field(default=1, metadata={"help": "passes over each batch"})
    reward: str = field(default="em", metadata={"help": "reward name: em, f1, format, ..."})
    overlong_buffer: int = field(
        default=0,
        metadata={
            "help": "DAPO's overlong shaping: responses within this many tokens of the "
            "longest the rollout allows lose reward linearly, up to overlong_penalty (0: off)"
        },
    )
    overlong_penalty: float = field(
        default=1.0, metadata={"help": "the reward a response at the length cap loses"}
    )
    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "DAPO's dynamic sampling: drop groups whose rewards are all equal and "
            "roll out more questions until batch_size groups differ"
        },
    )
    dynamic_sampling_rounds: int = field(
        default=3, metadata={"help": "extra rollout rounds a step may take to fill its batch"}
    )
    policy_loss: str = field(
        default="ppo",
        metadata={
            "help": "ppo (PPO-clip per token), gspo (one clipped ratio per sequence), "
            "cispo (REINFORCE weighted by a clipped ratio)"
        },
    )
    clip: float | None = field(
        default=None,
        metadata={"help": "lower ratio clip [default: the loss's: ppo 0.2, gspo 3e-4, cispo none]"},
    )
    clip_high: float | None = field(
        default=None,
        metadata={
            "help": "upper ratio clip; above clip is DAPO's clip-higher [default: the loss's: "
            "ppo = clip, gspo 4e-4, cispo 0.28]"
        },
    )
    dual_clip: float | None = field(
        default=None, metadata={"help": "dual-clip c (> 1) or off (ppo loss only)"}
    )
    loss_agg: str | None = field(
        default=None,
        metadata={
            "help": "how token losses add up: token-mean, seq-mean-token-sum, "
            "seq-mean-token-mean, seq-mean-token-sum-norm (Dr. GRPO) [default: the "
            "loss's: ppo and cispo token-mean, gspo seq-mean-token-mean]"
        },
    )
    loss_agg_norm: int | None = field(
        default=None,
        metadata={
            "help": "seq-mean-token-sum-norm's fixed tokens per sequence [default: the "
            "longest response the rollout allows]"
        },
    )
    value_clip: float = field(default=0.5, metadata={"help": "value loss clip (PPO)"})
    gamma: float = field(default=1.0, metadata={"help": "discount (PPO, REINFORCE++)"})
    lam: float = field(default=1.0, metadata={"help": "GAE lambda (PPO)"})
    norm_adv_by_std: bool = field(default=True, metadata={"help": "GRPO: divide by group std"})
    kl_coef: float = field(
        default=0.001, metadata={"help": "KL coefficient; 0 drops the reference"}
    )
    kl_estimator: str = field(default="k3", metadata={"help": "k1, k2 or k3 (low variance)"})
    kl_in_reward: bool = field(
        default=False, metadata={"help": "KL as a reward penalty (PPO) instead of a loss term"}
    )
    entropy_coef: float = field(default=0.001, metadata={"help": "entropy bonus coefficient"})
    state_masking: bool = field(
        default=True, metadata={"help": "no loss on retrieved tokens (off: the paper's ablation)"}
    )
    actor_lr: float = field(default=1e-6, metadata={"help": "actor learning rate"})
    critic_lr: float = field(default=1e-5, metadata={"help": "critic learning rate"})
    warmup_ratio: float = field(default=0.285, metadata={"help": "linear warm-up share of steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})

    def __post_init__(self) -> None:
        from searchr1.reward import REWARDS
        from searchr1.rl.algos import ADVANTAGES, KL_ESTIMATORS
        from searchr1.rl.losses import LOSS_AGGS, POLICY_LOSSES

        _known("rl.algorithm", self.algorithm, ADVANTAGES)
        _known("rl.reward", self.reward, REWARDS)
        _known("rl.kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _known("rl.policy_loss", self.policy_loss, POLICY_LOSSES)
        if self.loss_agg is not None:
            _known("rl.loss_agg", self.loss_agg, LOSS_AGGS)
        if (
            self.dual_clip is not None
            and "dual_clip" not in POLICY_LOSSES[self.policy_loss].options
        ):
            raise ValueError(f"rl.dual_clip applies to the ppo policy loss, not {self.policy_loss}")
        clip, clip_high = self.clip_range
        if not (0 < clip <= 1 and clip_high > 0):
            raise ValueError(
                f"rl.clip must be in (0, 1] and rl.clip_high > 0, got {clip}, {clip_high}"
            )
        if self.dynamic_sampling_rounds < 0:
            raise ValueError("rl.dynamic_sampling_rounds must be >= 0")
        if self.overlong_buffer < 0 or self.overlong_penalty < 0:
            raise ValueError("rl.overlong_buffer and rl.overlong_penalty must be >= 0")
        if self.loss_agg_norm is not None and self.loss_agg_norm < 1:
            raise ValueError(f"rl.loss_agg_norm must be >= 1, got {self.loss_agg_norm}")
        for name in ("group_size", "batch_size", "micro_batch_size", "ppo_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"rl.{name} must be >= 1, got {getattr(self, name)}")
        if ADVANTAGES[self.algorithm].grouped and self.group_size < 2:
            raise ValueError(f"rl.group_size must be >= 2 for {self.algorithm}")
        if self.mini_batch_size < 0:
            raise ValueError("rl.mini_batch_size must be >= 0")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ValueError(f"rl.dual_clip must be > 1, got {self.dual_clip}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"rl.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")

    @property
    def aggregation(self) -> str:
        """``rl.loss_agg``, else the policy loss's own."""
        from searchr1.rl.losses import POLICY_LOSSES

        return self.loss_agg or POLICY_LOSSES[self.policy_loss].loss_agg

    @property
    def clip_range(self) -> tuple[float, float]:
        """``(clip, clip_high)`` as the policy loss applies them: the config's, else the
        loss's own (``clip_high`` falls back to ``clip`` where the loss has none)."""
        from searchr1.rl.losses import POLICY_LOSSES

        loss = POLICY_LOSSES[self.policy_loss]
        clip = loss.clip if self.clip is None else self.clip
        if self.clip_high is not None:
            return clip, self.clip_high
        return clip, clip if loss.clip_high is None or self.clip is not None else loss.clip_high


@dataclass(frozen=True)
class RunConfig:
    """Length of the run, checkpoints, validation and logging."""

    output_dir: str = field(default="runs/searchr1", metadata={"help": "where everything goes"})
    total_steps: int = field(default=100, metadata={"help": "training steps"})
    save_every: int = field(default=50, metadata={"help": "checkpoint every N steps (0: end only)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints kept"})
    eval_every: int = field(default=0, metadata={"help": "validate every N steps (0: never)"})
    seed: int = field(default=0, metadata={"help": "seed of data order and sampling"})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard logs if present"})
    wandb_project: str | None = field(default=None, metadata={"help": "log to wandb if set"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"run.total_steps must be >= 1, got {self.total_steps}")
        if self.save_every < 0 or self.eval_every < 0 or self.keep_checkpoints < 1:
            raise ValueError("run.save_every/eval_every must be >= 0, keep_checkpoints >= 1")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run reads."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.rl.reward == "format" and self.rollout.protocol != "search_r1":
            raise ValueError(
                "rl.reward=format scores Search-R1's tag grammar (<search>, <information>); "
                f"it cannot score rollout.protocol={self.rollout.protocol}: use em or f1"
            )

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> TrainConfig:
        """Builds a config from nested mappings, checking names and types."""
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
        sections = {f.name: f for f in fields(cls)}
        unknown = set(raw) - set(sections)
        if unknown:
            raise ValueError(
                f"{source}: unknown section(s) {sorted(unknown)}; known: {sorted(sections)}"
            )
        built = {}
        for name, f in sections.items():
            section_type = _resolve(cls, f.type)
            built[name] = _build(section_type, raw.get(name) or {}, f"{source}: {name}")
        return cls(**built)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
        """Reads ``path`` and applies ``overrides`` (``section.field=value`` strings)."""
        import yaml

        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_dict(raw, str(path)).override(overrides)

    def override(self, overrides: Sequence[str]) -> TrainConfig:
        """A copy with ``section.field=value`` overrides applied (values read as YAML)."""
        import yaml

        raw = self.to_dict()
        for item in overrides:
            key, sep, value = item.partition("=")
            section, dot, name = key.strip().partition(".")
            if not sep or not dot:
                raise ValueError(f"--set {item!r}: expected section.field=value")
            if section not in raw or name not in raw[section]:
                known = sorted(raw.get(section, {})) if section in raw else sorted(raw)
                raise ValueError(f"--set {item!r}: unknown {key.strip()!r}; known: {known}")
            raw[section][name] = yaml.safe_load(value)
        return TrainConfig.from_dict(raw, "--set")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain data (what the YAML holds)."""
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in fields(self)}

    def to_yaml(self) -> str:
        """The config as YAML, one section per concern."""
        import yaml

        text: str = yaml.safe_dump(self.to_dict(), sort_keys=False)
        return text


def _known(name: str, value: str, registry: Any) -> None:
    """``ValueError`` naming the known values when ``value`` is not in ``registry``."""
    if value not in registry:
        raise ValueError(f"{name}: unknown {value!r}; known: {', '.join(sorted(registry))}")


def _resolve(owner: type, annotation: Any) -> Any:
    """A field's type, with string annotations (``from __future__``) evaluated."""
    if isinstance(annotation, str):
        hints = typing.get_type_hints(owner)
        for f in fields(owner):
            if f.type == annotation:
                return hints[f.name]
    return annotation


def _build(cls: type[T], raw: Any, where: str) -> T:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    values = {name: _check(hints[name], value, f"{where}.{name}") for name, value in raw.items()}
    try:
        return cls(**values)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def _check(annotation: Any, value: Any, where: str) -> Any:
    """``value`` if it fits ``annotation`` (ints widen to floats, lists to tuples)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _check(option, value, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: {value!r} is not {_name(annotation)}")
    if origin is Literal:
        if value in args:
            return value
        raise ValueError(f"{where}: {value!r} is not one of {list(args)}")
    if annotation is type(None):
        if value is None:
            return None
        raise ValueError(f"{where}: expected null")
    if origin in (list, tuple):
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_check(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if annotation is int and isinstance(value, bool):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ValueError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def _name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "")
