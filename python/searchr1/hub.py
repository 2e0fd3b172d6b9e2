"""Where models are loaded from: a directory, or the local Hugging Face cache; never the
network. A name that is no directory would make transformers or vLLM download whatever
the Hub holds under it; searchr1 loads only what the user has put on disk."""

from __future__ import annotations

from pathlib import Path

from searchr1.errors import InputError

__all__ = ["local_model"]


def local_model(model: str | Path) -> str:
    """The directory to load ``model`` from: its own path (made absolute), or its snapshot
    in the local Hugging Face cache; :class:`~searchr1.errors.InputError` naming it when
    neither is there. Load from the result with ``local_files_only=True`` too."""
    path = Path(model).expanduser()
    if path.exists():
        return str(path.resolve())  # absolute: what a saved LoRA adapter names as its base
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(str(model), local_files_only=True))
    except (OSError, ValueError):
        raise InputError(
            f"no model directory {str(model)!r} ({path.absolute()} does not exist), and no "
            "model of that name in the local Hugging Face cache; searchr1 never downloads "
            "models: download it first, e.g. `hf download NAME --local-dir DIR`"
        ) from None
