"""Stop checking: the Rust token-level checker vs an incremental Python ``re`` scan.

Both watch a batch of sequences decoded in lockstep for ``</search>`` / ``</answer>``.
The reference does what a Python rollout loop does without the checker: append each
sequence's new token text to its decoded text, then search the end of that text with a
compiled regex. (It is given every token's text up front, so it decodes for free.)
The checker is handed the step's token ids as one numpy array.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, machine, report
from searchr1 import TokenStopChecker
from searchr1.tags import SEARCH_R1_STOPS


def make_vocab(size: int, seed: int = 0) -> list[bytes]:
    """A byte-level vocabulary: 256 bytes, the stop pieces, then random 2-8 byte words."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz <>/\n", dtype=np.uint8)
    vocab = [bytes([b]) for b in range(256)]
    vocab += [b"</", b"search", b">", b"answer", b"</search>", b">\n\n"]
    while len(vocab) < size:
        vocab.append(rng.choice(letters, int(rng.integers(2, 9))).tobytes())
    return vocab


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=150_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    vocab = make_vocab(args.vocab)
    texts = [t.decode("utf-8", "replace") for t in vocab]
    rng = np.random.default_rng(1)
    # Ordinary words everywhere; every 4th sequence ends with "</" "search" ">" at a
    # random step, so stops span tokens and some sequences finish early.
    ids = rng.integers(262, len(vocab), (args.steps, args.batch), dtype=np.int64)
    for b in range(0, args.batch, 4):
        at = int(rng.integers(3, args.steps))
        ids[at - 3 : at, b] = [256, 257, 258]
    stop_re = re.compile("|".join(re.escape(s) for s in SEARCH_R1_STOPS))
    longest = max(map(len, SEARCH_R1_STOPS))

    checker = TokenStopChecker(vocab, list(SEARCH_R1_STOPS))

    def run_checker() -> list[int]:
        checker.reset(args.batch)
        stopped_at = [-1] * args.batch
        for step in range(args.steps):
            out = checker.step(ids[step])
            for b in np.flatnonzero(out > 0):
                stopped_at[b] = step
        return stopped_at

    def run_reference() -> list[int]:
        decoded = [""] * args.batch
        stopped_at = [-1] * args.batch
        for step in range(args.steps):
            row = ids[step].tolist()
            for b in range(args.batch):
                if stopped_at[b] >= 0:
                    continue
                piece = texts[row[b]]
                text = decoded[b] + piece
                decoded[b] = text
                if stop_re.search(text, max(0, len(text) - len(piece) - longest + 1)):
                    stopped_at[b] = step
        return stopped_at

    assert run_checker() == run_reference()
    t_ours = best_of(run_checker, args.repeat)
    t_ref = best_of(run_reference, args.repeat)
    per = args.batch * args.steps
    report(
        f"stop check: batch {args.batch} x {args.steps} steps, vocab {len(vocab)} ({machine()})",
        [
            ("TokenStopChecker", f"{t_ours / per * 1e9:7.1f} ns per token per sequence"),
            ("Python re over decoded text", f"{t_ref / per * 1e9:7.1f} ns per token per sequence"),
            ("speed-up", f"{t_ref / t_ours:7.1f}x"),
        ],
    )
    return {
        "ours_ns": t_ours / per * 1e9,
        "reference_ns": t_ref / per * 1e9,
        "ratio": t_ref / t_ours,
    }


if __name__ == "__main__":
    main()
