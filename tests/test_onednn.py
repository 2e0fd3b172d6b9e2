"""Packed oneDNN linears (searchr1.retrieval.onednn): same outputs, fewer passes."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from searchr1.retrieval import onednn  # noqa: E402
from searchr1.retrieval.onednn import PackedLinear, pack_linears  # noqa: E402

needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN"
)


def tiny_bert(hidden_act: str = "gelu", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act=hidden_act,
    )
    torch.manual_seed(0)
    return transformers.BertModel(config).to(dtype).eval()


def hidden(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(0, 100, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0  # padding, as in a batch of unequal texts
    with torch.inference_mode():
        out: torch.Tensor = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return out.float()


def linears(model: torch.nn.Module) -> int:
    return sum(type(m) is torch.nn.Linear for m in model.modules())


@needs_onednn
def test_packed_bert_computes_what_it_did() -> None:
    model = tiny_bert()
    before, n = hidden(model), linears(model)
    packed = copy.deepcopy(model)
    assert pack_linears(packed) == n == 2 * 6 + 1  # q, k, v, out, in, out per layer; pooler
    assert linears(packed) == 0
    fused = [m for m in packed.modules() if isinstance(m, PackedLinear) and m.gelu]
    assert len(fused) == 2  # each layer's intermediate, its GELU now inside the product
    for layer in packed.encoder.layer:
        assert isinstance(layer.intermediate.intermediate_act_fn, torch.nn.Identity)
    torch.testing.assert_close(hidden(packed), before, rtol=1e-5, atol=1e-5)
    assert not any(True for _ in packed.encoder.layer[0].intermediate.parameters())


@needs_onednn
def test_packing_leaves_the_global_rng_alone() -> None:
    model = tiny_bert()
    state = torch.get_rng_state()
    assert pack_linears(model) == 13
    assert torch.equal(torch.get_rng_state(), state)


@needs_onednn
def test_tanh_gelu_is_not_fused() -> None:
    model = tiny_bert(hidden_act="gelu_new")  # the tanh approximation: oneDNN's differs
    before = hidden(model)
    assert pack_linears(model) == 13
    assert not any(isinstance(m, PackedLinear) and m.gelu for m in model.modules())
    act = model.encoder.layer[0].intermediate.intermediate_act_fn
    assert type(act).__name__ == "NewGELUActivation"
    torch.testing.assert_close(hidden(model), before, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_bfloat16_is_packed_and_float16_is_not() -> None:
    model = tiny_bert(dtype=torch.bfloat16)
    before = hidden(model)
    assert pack_linears(model) == 13
    torch.testing.assert_close(hidden(model), before, rtol=0.05, atol=0.05)
    assert pack_linears(tiny_bert(dtype=torch.float16)) == 0


def test_without_onednn_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    model = tiny_bert()
    assert pack_linears(model) == 0 and linears(model) == 13


@needs_onednn
def test_a_disagreeing_kernel_leaves_the_model_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    real = PackedLinear.forward

    def off_by_one(self: PackedLinear, x: torch.Tensor) -> torch.Tensor:
        return real(self, x) + 1

    model = tiny_bert()
    before = hidden(model)
    monkeypatch.setattr(onednn.PackedLinear, "forward", off_by_one)
    assert pack_linears(model) == 0
    monkeypatch.undo()
    assert linears(model) == 13
    torch.testing.assert_close(hidden(model), before)
