"""Models are loaded from disk only: a name that is no directory never reaches a hub,
whatever HF_HUB_OFFLINE says (the Makefile sets it; users do not)."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

LOADS = {
    "hf engine": "from searchr1.rollout import HFEngine; HFEngine.from_pretrained(NAME)",
    "critic": "from searchr1.rl.modeling import ValueModel; ValueModel.from_pretrained(NAME)",
    "vllm engine": "from searchr1.rollout.vllm import VLLMEngine; VLLMEngine(NAME)",
    "trainer": """
        from searchr1.config import TrainConfig
        from searchr1.rl.trainer import Trainer
        Trainer(TrainConfig.from_dict({
            "model": {"path": NAME, "device": "cpu"},
            "data": {"train_files": [TRAIN]},
            "rl": {"batch_size": 2, "group_size": 2, "mini_batch_size": 0},
            "run": {"output_dir": OUT},
        }))
    """,
    "encoder": """
        from searchr1.retrieval.encoder import Encoder, EncoderConfig
        Encoder(EncoderConfig(model=NAME))
    """,
}


@pytest.fixture
def hub() -> Iterator[list[str]]:
    """A stand-in for the Hugging Face Hub that records every request it gets."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_error(404)

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    os.environ["SEARCHR1_TEST_HUB"] = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()
        del os.environ["SEARCHR1_TEST_HUB"]


@pytest.mark.slow  # a fresh interpreter per load, each importing torch and transformers
@pytest.mark.parametrize("load", list(LOADS))
def test_a_model_name_never_reaches_the_hub(hub: list[str], tmp_path: Path, load: str) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text('{"question": "q", "golden_answers": ["a"]}\n')
    code = f"NAME = 'nobody-here/no-model'; TRAIN = {str(train)!r}; OUT = {str(tmp_path)!r}\n"
    code += textwrap.dedent(LOADS[load]).strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB_OFFLINE")}
    env.update(
        HF_ENDPOINT=os.environ["SEARCHR1_TEST_HUB"],
        HF_HOME=str(tmp_path / "hf-home"),  # an empty cache
        HF_HUB_ETAG_TIMEOUT="2",
        HF_HUB_DOWNLOAD_TIMEOUT="2",
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0, done.stdout
    # (huggingface_hub itself may fetch a registry of its own, /api/agent-harnesses.)
    asked = [path for path in hub if "nobody-here" in path]
    assert asked == [], f"{load} asked the hub for the model: {asked}"
    assert "nobody-here/no-model" in done.stderr.splitlines()[-1], done.stderr[-2000:]
