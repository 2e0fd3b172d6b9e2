"""Linear layers with pre-packed oneDNN weights, for encoders on the CPU.

On the CPU, ``nn.Linear`` copies its bias into the output, then calls MKL's sgemm on
the weight as stored (MKL picks a slower code path on AMD processors). oneDNN, which
torch ships, can hold the weight reordered once into its own blocked layout and apply
the bias, and the GELU of a BERT-style feed-forward block, inside the product. On
all-MiniLM-L6-v2's shapes, 2 cores: 1.2-1.4x the GFLOP/s of the 384 -> 1536 layer with
its GELU, about 1.15x for the others (benches/README.md). The arithmetic is the same,
in the same precision: outputs agree with ``nn.Linear`` to rounding. bfloat16 weights
(on CPUs that multiply them natively) are packed too: 1.1x there.

:func:`pack_linears` does this in place. The packed modules are for inference only:
they hold no parameters, so nothing trains them and a ``state_dict`` leaves them out.
This module imports torch; the encoder imports it only when it packs.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PackedLinear", "pack_linears"]


class PackedLinear(nn.Module):
    """``nn.Linear`` (and then the exact GELU, if ``gelu``) on a weight pre-packed for
    oneDNN. Float32 or bfloat16, CPU, inference only."""

    def __init__(self, linear: nn.Linear, gelu: bool = False) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.gelu = gelu
        weight = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = torch.ops.mkldnn._linear_pointwise
        if self.gelu:  # "none": the erf GELU, not the tanh approximation
            out: torch.Tensor = op(x, self.packed, self.bias, "gelu", [], "none")
        else:
            out = op(x, self.packed, self.bias, "none", [], "")
        return out

    def extra_repr(self) -> str:
        gelu = ", gelu" if self.gelu else ""
        return f"in_features={self.in_features}, out_features={self.out_features}{gelu}"


def pack_linears(model: nn.Module) -> int:
    """Replaces ``model``'s float32 and bfloat16 ``nn.Linear`` modules with
    :class:`PackedLinear`, in place, fusing the exact GELU of BERT-style intermediates
    (a ``dense`` linear, then ``intermediate_act_fn``). Returns how many were packed: 0
    where torch's oneDNN is missing or disagrees with ``nn.Linear``, and then the model
    is unchanged."""
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return 0
    plan: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, attribute, replacement)
    fused: set[int] = set()
    try:
        for parent in model.modules():
            dense = getattr(parent, "dense", None)
            if _packable(dense) and _exact_gelu(getattr(parent, "intermediate_act_fn", None)):
                assert isinstance(dense, nn.Linear)
                packed = PackedLinear(dense, gelu=True)
                _check(dense, packed)
                plan += [(parent, "dense", packed), (parent, "intermediate_act_fn", nn.Identity())]
                fused.add(id(dense))
        for parent in model.modules():
            for name, child in parent.named_children():
                if _packable(child) and id(child) not in fused:
                    assert isinstance(child, nn.Linear)
                    packed = PackedLinear(child)
                    _check(child, packed)
                    plan.append((parent, name, packed))
    except RuntimeError:  # a torch build whose oneDNN refuses these ops, or disagrees
        return 0
    for parent, name, module in plan:
        setattr(parent, name, module)
    return sum(isinstance(module, PackedLinear) for _, _, module in plan)


#: The dtypes packed, with how close a packed layer must come to ``nn.Linear`` (relative,
#: absolute) on its check: float32 rounding; bfloat16's 8-bit mantissa.
_TOLERANCE = {torch.float32: (1e-4, 1e-5), torch.bfloat16: (2e-2, 2e-2)}


def _packable(module: object) -> bool:
    return type(module) is nn.Linear and module.weight.dtype in _TOLERANCE


def _exact_gelu(module: object) -> bool:
    """The erf GELU (BERT's ``hidden_act="gelu"``), not the tanh approximation."""
    if isinstance(module, nn.GELU):
        return module.approximate == "none"
    # transformers' GELUActivation: nn.functional.gelu unless it fell back to Python's
    return type(module).__name__ == "GELUActivation" and (
        getattr(module, "act", None) is nn.functional.gelu
    )


def _check(linear: nn.Linear, packed: PackedLinear) -> None:
    """``packed`` computes what ``linear`` (and its GELU) does, on a few random rows (from
    a generator of its own: loading an encoder mid-run leaves torch's global RNG, and so
    a resumed run's sampling, as it was)."""
    rows = torch.Generator().manual_seed(0)
    x = torch.randn(3, linear.in_features, generator=rows).to(linear.weight.dtype)
    with torch.no_grad():
        want = linear(x)
        if packed.gelu:
            want = nn.functional.gelu(want)
        got = packed(x)
    rtol, atol = _TOLERANCE[linear.weight.dtype]
    if not torch.allclose(got.float(), want.float(), rtol=rtol, atol=atol):
        raise RuntimeError(f"oneDNN's packed linear disagrees with {linear}")
