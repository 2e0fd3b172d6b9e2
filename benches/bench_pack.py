"""Packing rollouts: searchr1.pack vs the way Search-R1 builds its tensors, in one run.

Search-R1 (search_r1/llm_agent/generation.py) grows the response tensor turn by turn:
each turn it concatenates the padded responses and observations, derives the masks by
comparing ids with the pad id, and moves the padding aside with a stable argsort and a
gather; at the end it builds attention and position ids from ``ids != pad``. The
reference below does the same in torch on the CPU, from per-turn padded tensors (what
its engine hands over). searchr1.pack starts from the per-trajectory segments.

Default shape (the issue's): 512 trajectories, 4 turns, prompt 2048, response 4096.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, machine, report
from searchr1 import Segment, Trajectory, pack

PAD = 0


def make_rollouts(
    batch: int, turns: int, prompt: int, response: int, seed: int = 0
) -> tuple[list[Trajectory], torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Random rollouts, as trajectories and as Search-R1's per-turn padded tensors."""
    rng = np.random.default_rng(seed)
    per_turn = response // turns
    trajs: list[Trajectory] = []
    prompts = torch.full((batch, prompt), PAD, dtype=torch.int64)
    turn_tensors: list[tuple[list[np.ndarray], list[np.ndarray]]] = [([], []) for _ in range(turns)]
    for b in range(batch):
        p = int(rng.integers(prompt // 2, prompt + 1))
        prompt_ids = rng.integers(1, 150_000, p, dtype=np.int64)
        prompts[b, prompt - p :] = torch.from_numpy(prompt_ids)
        segments = []
        for t in range(turns):
            gen_len = int(rng.integers(per_turn // 4, per_turn // 2))
            obs_len = int(rng.integers(per_turn // 4, per_turn // 2))
            gen = rng.integers(1, 150_000, gen_len, dtype=np.int64)
            obs = rng.integers(1, 150_000, obs_len, dtype=np.int64)
            logprobs = -rng.random(gen_len, dtype=np.float32)
            segments += [Segment(gen, True, logprobs), Segment(obs, False)]
            turn_tensors[t][0].append(gen)
            turn_tensors[t][1].append(obs)
        trajs.append(Trajectory(prompt_ids, segments))

    def padded(rows: list[np.ndarray]) -> torch.Tensor:
        out = torch.full((batch, max(len(r) for r in rows)), PAD, dtype=torch.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.from_numpy(r)
        return out

    per_turn_tensors = [(padded(g), padded(o)) for g, o in turn_tensors]
    return trajs, prompts, per_turn_tensors


def concat_with_info_mask(
    responses: torch.Tensor, masked: torch.Tensor, cur: torch.Tensor, obs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Search-R1's right-side update: concatenate, then push padding right, stably."""
    joined = torch.cat([responses, cur, obs], dim=1)
    joined_masked = torch.cat([masked, cur, torch.full_like(obs, PAD)], dim=1)
    order = (joined == PAD).to(torch.int64).argsort(dim=1, stable=True)
    return joined.gather(1, order), joined_masked.gather(1, order)


def reference_pack(
    prompts: torch.Tensor, turns: list[tuple[torch.Tensor, torch.Tensor]], max_response: int
) -> dict[str, torch.Tensor]:
    batch = prompts.shape[0]
    responses = torch.empty((batch, 0), dtype=torch.int64)
    masked = torch.empty((batch, 0), dtype=torch.int64)
    for cur, obs in turns:
        responses, masked = concat_with_info_mask(responses, masked, cur, obs)
        effective = int((responses != PAD).sum(dim=1).max())
        keep = min(max_response, effective)
        responses, masked = responses[:, :keep], masked[:, :keep]
    input_ids = torch.cat([prompts, responses], dim=1)
    attention_mask = torch.cat([prompts != PAD, responses != PAD], dim=1).to(torch.int64)
    info_mask = torch.cat([prompts != PAD, masked != PAD], dim=1).to(torch.int64)
    position_ids = (torch.cumsum(attention_mask, dim=1) - 1) * attention_mask
    loss_mask = info_mask[:, prompts.shape[1] :].to(torch.float32)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "loss_mask": loss_mask,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--response", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)

    trajs, prompts, turns = make_rollouts(args.batch, args.turns, args.prompt, args.response)

    ours = pack(trajs, max_prompt_len=args.prompt, max_response_len=args.response)
    ref = reference_pack(prompts, turns, args.response)
    # The same batch either way (the reference pads responses to the batch's longest).
    r = ref["input_ids"].shape[1] - args.prompt
    assert np.array_equal(ours.input_ids[:, : args.prompt + r], ref["input_ids"].numpy())
    assert np.array_equal(ours.loss_mask[:, :r], ref["loss_mask"].numpy())
    assert np.array_equal(ours.position_ids[:, : args.prompt + r], ref["position_ids"].numpy())

    t_ours = best_of(
        lambda: pack(trajs, max_prompt_len=args.prompt, max_response_len=args.response),
        args.repeat,
    )
    t_ref = best_of(lambda: reference_pack(prompts, turns, args.response), args.repeat)
    tokens = args.batch * (args.prompt + args.response)

    def line(t: float) -> str:
        return f"{t * 1e3:8.1f} ms  ({tokens / t / 1e6:6.0f} M positions/s)"

    report(
        f"pack: {args.batch} trajectories x {args.turns} turns, prompt {args.prompt}, "
        f"response {args.response} ({machine()}, torch threads {torch.get_num_threads()})",
        [
            ("searchr1.pack", line(t_ours)),
            ("Search-R1 way (torch)", line(t_ref)),
            ("speed-up", f"{t_ref / t_ours:8.1f}x"),
        ],
    )
    return {"pack_ms": t_ours * 1e3, "reference_ms": t_ref * 1e3, "ratio": t_ref / t_ours}


if __name__ == "__main__":
    main()
