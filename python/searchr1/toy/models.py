"""Tiny models built from nothing: a BPE tokenizer trained on given text and a random
Qwen2-architecture causal LM, saved as an ordinary model directory.

There is no model hub on the machines this project is tested on; every engine and the
trainer load these directories exactly as they would load a released checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from searchr1.rollout.prompt import INVALID_ACTION, PROMPT_TEMPLATE

__all__ = [
    "CHAT_TEMPLATE",
    "TEXT_FIELDS",
    "TinyModelConfig",
    "init_model",
    "read_texts",
    "train_tokenizer",
]

#: A Qwen2-style chat template (ChatML). With ``tools=`` it declares them in a system
#: message, tersely (``<tools>search(query)</tools>``: a tiny model reads a short prompt
#: better than a JSON schema), and writes calls and results as Qwen2.5 does
#: (``<tool_call>`` JSON, results in ``<tool_response>`` in a user turn), for
#: ``rollout.protocol=tool_call``.
CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\n<tools>' }}"
    "{% for tool in tools %}{% set f = tool['function'] if tool['function'] is defined"
    " else tool %}{{ f['name'] + '(' + (f['parameters']['properties'] | list | join(', '))"
    " + ')' }}{% endfor %}"
    "{{ '</tools><|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\\n<tool_response>\\n' + message['content']"
    " + '\\n</tool_response><|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] }}"
    "{% for call in message['tool_calls'] or [] %}"
    "{% set call = call['function'] if call['function'] is defined else call %}"
    "{{ '<tool_call>\\n{\"name\": \"' + call['name'] + '\", \"arguments\": '"
    " + (call['arguments'] | tojson) + '}\\n</tool_call>' }}{% endfor %}"
    "{{ '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
#: Qwen2's pre-tokenization: punctuation keeps the newlines after it, so ``">\n\n"``
#: can be one token and a stop string can end inside a token, as with real models.
QWEN2_PRETOKENIZE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: Text every tokenizer is trained on besides the caller's: the protocol's own strings.
PROTOCOL_TEXT = [
    PROMPT_TEMPLATE,
    INVALID_ACTION,
    "<think> </think> <search> </search> <answer> </answer>",
    '\n\n<information>Doc 1(Title: "Title") text\nDoc 2(Title: "Title") text</information>\n\n',
]


@dataclass(frozen=True)
class TinyModelConfig:
    """The shape of a tiny Qwen2 model (head_dim = hidden / heads; vLLM's CPU attention
    needs head_dim >= 32)."""

    vocab_size: int = field(default=2048, metadata={"help": "BPE vocabulary size to train"})
    hidden_size: int = field(default=128, metadata={"help": "model width"})
    intermediate_size: int = field(default=384, metadata={"help": "MLP width"})
    num_layers: int = field(default=2, metadata={"help": "transformer blocks"})
    # Four heads of 32 rather than two of 64: the demo's warm start then reads a found
    # document better (answers 0.37 vs 0.21 of held-out questions right when handed the
    # right search) at the same cost; four layers read worse in 600 SFT steps, at 2x the time.
    num_heads: int = field(default=4, metadata={"help": "attention heads"})
    num_kv_heads: int | None = field(
        default=None, metadata={"help": "key/value heads (GQA); None: as many as num_heads"}
    )
    max_position_embeddings: int = field(default=4096, metadata={"help": "longest sequence"})
    init_std: float = field(default=0.02, metadata={"help": "std of the random weights"})
    seed: int = field(default=0, metadata={"help": "seed of the random weights"})

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if self.num_heads % self.num_kv_heads:  # type: ignore[operator]  # set above
            raise ValueError("num_heads must be a multiple of num_kv_heads")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> Any:
    """A byte-level BPE tokenizer (as Qwen2's) trained on ``texts`` and the protocol text.

    Returns a ``transformers.PreTrainedTokenizerFast`` with ChatML special tokens and
    chat template; ``<|im_end|>`` ends a reply and ``<|endoftext|>`` pads.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )

    def everything() -> Iterable[str]:
        yield from PROTOCOL_TEXT
        yield from texts

    tok.train_from_iterator(everything(), trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def init_model(
    out: str | Path, texts: Iterable[str] = (), config: TinyModelConfig | None = None
) -> Path:
    """Trains a tokenizer on ``texts``, builds a random Qwen2 model, saves both to ``out``."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    config = config or TinyModelConfig()
    tokenizer = train_tokenizer(texts, config.vocab_size)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    model_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        initializer_range=config.init_std,
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    torch.manual_seed(config.seed)
    model = Qwen2ForCausalLM(model_config)  # type: ignore[no-untyped-call]
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        eos_token_id=eos, pad_token_id=pad
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


#: The fields of a JSONL row whose text a tokenizer learns (QA rows and corpus rows).
TEXT_FIELDS = ("question", "contents", "title", "text")


def read_texts(paths: Iterable[str | Path]) -> list[str]:
    """The text of each file, to train a tokenizer on: the string fields (question,
    contents, title, text) of each JSONL row for a ``.jsonl`` file, else each non-empty
    line. A row that is not JSON raises :class:`~searchr1.errors.InputError` naming the
    file and line."""
    import json

    from searchr1.errors import InputError

    texts: list[str] = []
    for path in map(Path, paths):
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                if path.suffix != ".jsonl":
                    texts.append(line.rstrip("\n"))
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{line_no}: not valid JSON: {exc.msg}") from exc
                if isinstance(row, dict):
                    texts += [row[k] for k in TEXT_FIELDS if isinstance(row.get(k), str)]
    return texts
