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
