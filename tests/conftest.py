"""Shared fixtures: a small byte-level BPE tokenizer trained on our own text."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# No model hub here: transformers must never try to reach one.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

settings.register_profile("ci", max_examples=200, deadline=None)
settings.load_profile("ci")

CORPUS = [
    "Answer the given question. You must conduct reasoning inside <think> and </think> first.",
    "<search> who founded the city of Riverton </search>",
    "<answer> Beijing </answer>",
    '<information>Doc 1(Title: "Riverton") Riverton is a town.</information>',
    "Naïve café, déjà vu — 東京 and Zürich: unicode for the byte-level paths.",
    "</search>\n\n</answer>\n",
]


@pytest.fixture(scope="session")
def bpe_tokenizer():  # type: ignore[no-untyped-def]
    """A byte-level BPE tokenizer (as GPT-2 and Qwen2 use) trained on CORPUS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    return tok


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A random 2-layer Qwen2 model with a ChatML BPE tokenizer, saved as a directory.

    Its weights are large enough (std 0.5) that greedy decoding varies from step to step.
    """
    from searchr1.toy.models import TinyModelConfig, init_model

    texts = [
        "who founded the city of Riverton? Riverton was founded by Alice Marlow in 1820.",
        "<think> I need to search. </think> <search> Riverton founder </search>",
        "<answer> Alice Marlow </answer>",
    ] * 20
    config = TinyModelConfig(vocab_size=600, hidden_size=128, num_heads=2, init_std=0.5)
    return init_model(tmp_path_factory.mktemp("tiny") / "model", texts, config)
