"""LoRA adapters on the actor, through peft (``model.lora_rank``).

Only the adapters train; the base weights stay as loaded. So the reference policy is the
actor with its adapters switched off (:func:`adapters_off`), not a second copy of the
weights; an engine that holds weights of its own (vLLM) gets the base weights with the
adapters folded in (:func:`merged_weights`), under the base model's parameter names; and
a checkpoint holds the adapters alone (peft's ``adapter_model.safetensors`` and
``adapter_config.json``, which name the base model).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from searchr1.config import ModelConfig

__all__ = [
    "ADAPTER",
    "adapters_off",
    "is_lora",
    "load_adapters",
    "merged_weights",
    "with_adapters",
]

#: The name of the one adapter the actor carries.
ADAPTER = "default"


def with_adapters(model: Any, config: ModelConfig) -> Any:
    """``model`` with LoRA adapters of ``config.lora_rank`` on ``config.lora_targets``;
    every other parameter frozen."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ImportError("model.lora_rank needs peft: pip install 'searchr1[lora]'") from exc

    targets = config.lora_targets
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets if targets == "all-linear" else targets.split(","),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora, adapter_name=ADAPTER)


def is_lora(model: Any) -> bool:
    """Whether ``model`` carries peft adapters."""
    return hasattr(model, "peft_config")


@contextmanager
def adapters_off(model: Any) -> Iterator[None]:
    """Runs ``model`` as its base model (the reference policy) inside the block."""
    with model.disable_adapter():
        yield


def merged_weights(model: Any) -> dict[str, torch.Tensor]:
    """The base model's weights with the adapters folded in (``W + scale * B @ A``),
    named as the base model names them; the model itself is left untouched (merging in
    place and back would round the base weights a little at every sync)."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    merged: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            layer: Any = module  # a LoRA Linear (peft's typing stops at LoraLayer)
            weight = layer.get_base_layer().weight
            merged[f"{name}.weight"] = weight.detach() + layer.get_delta_weight(ADAPTER)
    out: dict[str, torch.Tensor] = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        out[key] = merged.get(key, value)
    return out


def load_adapters(model: Any, directory: Path, device: torch.device | str) -> None:
    """Loads the adapters a checkpoint's ``actor/`` holds into ``model``; ``ValueError``
    when they do not fit it."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = directory / "adapter_model.safetensors"
    if not path.exists():
        raise ValueError(f"{directory} holds no LoRA adapters (adapter_model.safetensors)")
    result: Any = set_peft_model_state_dict(
        model, load_file(str(path), device=str(device)), adapter_name=ADAPTER
    )
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path}: the adapters do not fit the model "
            f"(missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]})"
        )
