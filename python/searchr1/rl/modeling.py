"""The models of a run: the policy's response log-probs, and a critic with a value head.

All functions take a packed batch as torch tensors (see
:meth:`searchr1.PackedBatch.to_torch`): ``input_ids`` ``[B, P + R]`` with responses in
the last ``R`` columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchr1.hub import local_model
from searchr1.rl.algos import entropy_from_logits, token_logprobs

__all__ = ["ValueModel", "response_logprobs", "response_values"]


def response_logprobs(
    model: Any,
    batch: dict[str, torch.Tensor],
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[B, R]`` of the response tokens under ``model`` (and their entropy).

    Logits are divided by the sampling ``temperature`` first, so the log-probs are those
    of the distribution the tokens were sampled from. Only the last ``R + 1`` positions'
    logits are computed.
    """
    ids = batch["input_ids"]
    r = batch["loss_mask"].shape[1]
    logits = model(
        input_ids=ids,
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
        logits_to_keep=r + 1,
    ).logits[:, :-1]
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    logprobs = token_logprobs(logits, ids[:, -r:])
    entropy = entropy_from_logits(logits) if with_entropy else None
    return logprobs, entropy


def response_values(critic: ValueModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The critic's value ``[B, R]`` of the state before each response token."""
    r = batch["loss_mask"].shape[1]
    values: torch.Tensor = critic(
        batch["input_ids"], batch["attention_mask"], batch["position_ids"]
    )
    return values[:, -r - 1 : -1]


class ValueModel(nn.Module):
    """A transformer backbone (no LM head) with a linear value head: ``[B, L]`` out."""

    def __init__(self, backbone: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> ValueModel:
        """The backbone of a causal LM directory; a zero value head, or the saved one."""
        from transformers import AutoModel

        auto: Any = AutoModel
        path = local_model(path)
        backbone = auto.from_pretrained(path, dtype=dtype, local_files_only=True)
        model = cls(backbone, backbone.config.hidden_size).to(dtype)
        head = Path(path) / "value_head.pt"
        if head.exists():
            model.value_head.load_state_dict(torch.load(head, weights_only=True))
        return model

    def save_pretrained(
        self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Saves the backbone as a model directory and the head beside it
        (``state_dict``: the weights to write instead of the module's own)."""
        backbone, head = None, self.value_head.state_dict()
        if state_dict is not None:
            parts: dict[str, dict[str, torch.Tensor]] = {"backbone": {}, "value_head": {}}
            for key, value in state_dict.items():
                owner, _, name = key.partition(".")
                parts[owner][name] = value
            backbone, head = parts["backbone"], parts["value_head"]
        self.backbone.save_pretrained(path, state_dict=backbone)  # type: ignore[operator]
        torch.save(head, Path(path) / "value_head.pt")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> torch.Tensor:
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        values: torch.Tensor = self.value_head(hidden).squeeze(-1)
        return values.float()
