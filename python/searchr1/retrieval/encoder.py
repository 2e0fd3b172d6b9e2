"""Text encoders for dense retrieval, on transformers.

An :class:`Encoder` turns queries and passages into L2-normalised float32 vectors with
a transformers ``AutoModel``: mean or CLS pooling over the last hidden state, optional
prefixes (e5 wants ``"query: "`` / ``"passage: "``), batched, in bf16/fp16 on a GPU.
torch and transformers are imported only when an encoder is created.

Models load from disk only (``local_files_only``): a model directory, or the name of a
model already in the local Hugging Face cache. Nothing is ever fetched from the Hub, so
a path that does not exist can never load a Hub repository of the same name.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from searchr1.errors import InputError

__all__ = ["Encoder", "EncoderConfig"]

Pooling = Literal["mean", "cls"]

#: On a CPU, batches padded to at most this many tokens use eager attention (a matmul
#: and a softmax), longer ones torch's SDPA kernel: for all-MiniLM-L6-v2 on 2 threads,
#: eager encodes queries (~24 tokens) 5-15% faster, and 256-token passages 1.5x slower.
EAGER_ATTENTION_UP_TO = 128

#: The dtypes an encoder can compute in (its weights and activations).
DTYPES = ("float32", "bfloat16", "float16")

#: What a Hugging Face Hub repository id looks like (``name`` or ``owner/name``).
_HUB_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)?")


def locate_model(model: str | Path, index: Path | None = None) -> str:
    """Where to load the encoder ``model`` from: the absolute path of a model directory,
    or a name to look up in the local Hugging Face cache.

    A relative path is taken relative to ``index`` (the index directory whose manifest
    names the model) when given, else to the working directory. A name that is no
    existing path but reads as a Hub id (``owner/name``) is returned as is, for the
    cache; anything else raises :class:`~searchr1.errors.InputError` naming the path.
    """
    name = str(model)
    path = Path(name).expanduser()
    if not path.is_absolute() and index is not None:
        path = index / path
    if path.exists():
        return str(path.resolve())
    if _HUB_ID.fullmatch(name) and ".." not in name:
        return name
    where = f" (named in {index / 'manifest.json'})" if index is not None else ""
    raise InputError(
        f"cannot load the encoder model {name!r}{where}: {path.absolute()} does not exist"
    )


@dataclass(frozen=True)
class EncoderConfig:
    """What an index records about its encoder, so queries are encoded the same way."""

    model: str = field(
        metadata={
            "help": "Model directory for AutoModel (stored absolute; a relative one is read "
            "relative to the index), or the name of a model in the local Hugging Face "
            "cache. Nothing is downloaded."
        }
    )
    pooling: Pooling = field(default="mean", metadata={"help": "mean or cls pooling."})
    query_prefix: str = field(default="", metadata={"help": 'Prepended to queries ("query: ").'})
    passage_prefix: str = field(
        default="", metadata={"help": 'Prepended to passages ("passage: ").'}
    )
    max_length: int = field(default=256, metadata={"help": "Tokens kept per text."})

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls"):
            raise InputError(f"pooling must be 'mean' or 'cls', not {self.pooling!r}")
        if self.max_length < 1:
            raise InputError(f"max_length must be positive, not {self.max_length}")

    @classmethod
    def for_model(cls, model: str | Path, **overrides: Any) -> EncoderConfig:
        """Settings that suit ``model``: e5 prefixes for e5 models, and the pooling a
        sentence-transformers model declares in ``1_Pooling/config.json``. A model
        directory is recorded by its absolute path, so an index built with a relative
        one opens from any working directory."""
        path = Path(model).expanduser()
        settings: dict[str, Any] = {"model": str(path.resolve()) if path.exists() else str(model)}
        if "e5" in path.name.lower():
            settings.update(query_prefix="query: ", passage_prefix="passage: ")
        pooling_file = path / "1_Pooling" / "config.json"
        if pooling_file.is_file():
            declared = json.loads(pooling_file.read_text())
            if declared.get("pooling_mode_cls_token"):
                settings["pooling"] = "cls"
        settings.update(overrides)
        return cls(**settings)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


#: The settings an index's manifest records for its encoder (it may record more).
ENCODER_FIELDS = frozenset(f.name for f in fields(EncoderConfig))


class Encoder:
    """Encodes texts into L2-normalised float32 vectors (``[n, dim]``).

    ``dtype`` is what the model computes in: bfloat16 on a GPU by default (Search-R1
    encodes in fp16 there), float32 on a CPU. bfloat16 on a CPU is fast only where the
    CPU multiplies bf16 natively (AVX512-BF16 or AMX): there MiniLM encodes queries 1.6x
    faster, each vector within cosine 0.9998 of float32's (benches/README.md). On a
    CPU the linear layers run on weights packed once for oneDNN, in float32 or bfloat16
    (:mod:`searchr1.retrieval.onednn`; 1.1-1.25x the queries/s, the same vectors to
    rounding); ``pack=False`` keeps the model as loaded.
    """

    def __init__(
        self,
        config: EncoderConfig,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 64,
        pack: bool = True,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # noise in a CLI
        self.config = config
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        if dtype not in DTYPES:
            raise InputError(f"encoder dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        location = locate_model(config.model)
        try:
            # From disk only: never a download, whatever HF_HUB_OFFLINE says.
            self.tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
            model = AutoModel.from_pretrained(
                location, dtype=getattr(torch, dtype), local_files_only=True
            )
        except (OSError, ValueError) as e:
            if Path(location).is_absolute():
                reason = f"the directory holds no model transformers can load: {e}"
            else:
                # transformers' own message here talks of connecting to the Hub.
                reason = (
                    "there is no such directory, and no model of that name in the local "
                    "Hugging Face cache (searchr1 never downloads models: give a model directory)"
                )
            raise InputError(f"cannot load the encoder model {location!r}: {reason}") from e
        self.model = model.to(self.device).eval()
        self.dim: int = int(self.model.config.hidden_size)
        #: How many linear layers run on packed oneDNN weights (on a CPU, in float32 or
        #: bfloat16, unless ``pack`` is false; see :mod:`searchr1.retrieval.onednn`).
        self.packed_linears = 0
        if self.device.type == "cpu" and pack:
            from searchr1.retrieval.onednn import pack_linears

            self.packed_linears = pack_linears(self.model)
        attention = self.model.config._attn_implementation
        self._switch_attention = self.device.type == "cpu" and attention == "sdpa"

    def _use_attention(self, tokens: int) -> None:
        """Eager attention for a short CPU batch, SDPA for a long one (see
        ``EAGER_ATTENTION_UP_TO``); the two compute the same function."""
        want = "eager" if tokens <= EAGER_ATTENTION_UP_TO else "sdpa"
        if not self._switch_attention or want == self.model.config._attn_implementation:
            return
        try:
            self.model.set_attn_implementation(want)
        except (AttributeError, ValueError, ImportError):
            # transformers < 5 (no set_attn_implementation), or a model with only one
            self._switch_attention = False

    def encode(
        self, texts: list[str], kind: Literal["query", "passage"] = "query"
    ) -> npt.NDArray[np.float32]:
        """Vectors of ``texts`` (queries or passages), shape ``[len(texts), dim]``.

        The texts are tokenized once, then encoded in batches of similar length
        (shortest first), so a batch is padded to little more than its own texts:
        on bench_server's queries this encodes 1.9x faster than batches in the given
        order (benches/README.md). Rows come back in the given order.
        """
        import torch

        prefix = self.config.query_prefix if kind == "query" else self.config.passage_prefix
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        features = self.tokenizer(
            [prefix + t for t in texts], truncation=True, max_length=self.config.max_length
        )
        lengths = [len(ids) for ids in features["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self.tokenizer.pad(
                    {key: [values[i] for i in rows] for key, values in features.items()},
                    return_tensors="pt",
                ).to(self.device)
                self._use_attention(batch["input_ids"].shape[1])
                hidden = self.model(**batch).last_hidden_state.float()
                if self.config.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[rows] = pooled.cpu().numpy()
        return out
