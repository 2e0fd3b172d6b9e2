"""FSDP2 (``fully_shard``): parameters, gradients and optimizer state sharded over ranks.

Each transformer block is its own FSDP unit (its weights are gathered just before it
runs and freed after), and the root unit holds the rest (embeddings, final norm, the
tied LM head). Gradients are reduce-scattered as sums, not means: the trainer weighs
every micro-batch by its share of all ranks' tokens, exactly as in plain data parallel.

Generation does not go through the sharded model: a rank's rollouts stop when its own
responses do, so ranks would run different numbers of forward passes and the gathers
would never match up. The rollout engine holds full weights instead (its own copy for
the transformers engine, as vLLM has its own), refreshed from the shards after each
update. Checkpoints are written from full state dicts, so they are ordinary model
directories whatever the number of ranks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = [
    "full_optimizer_state",
    "full_state_dict",
    "load_full_optimizer_state",
    "load_full_state_dict",
    "shard",
]


def shard(model: nn.Module, device_type: str, world: int) -> None:
    """Shards ``model`` in place over ``world`` ranks (``device_type``: cpu or cuda)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = init_device_mesh(device_type, (world,))
    for block in _blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # Plain sums (gloo has no pre-multiplied sum), divided by 1.
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)


def _blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks: the ``layers`` list of a transformers decoder."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "layers" and isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"{type(model).__name__}: no list of transformer blocks named 'layers'")


def full_state_dict(model: nn.Module, everywhere: bool = True) -> dict[str, torch.Tensor]:
    """The unsharded weights (a collective: every rank calls it). ``everywhere``: every
    rank gets them on its device; otherwise rank 0 gets them on the CPU, others nothing."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=not everywhere)
    state: dict[str, torch.Tensor] = get_model_state_dict(model, options=options)  # type: ignore[assignment]
    return state


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Loads unsharded weights (the same on every rank) into the shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, dict(state), options=options)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state, unsharded, on rank 0's CPU (a collective)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_full_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Loads what :func:`full_optimizer_state` returned (read on every rank)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=options)
