"""Runs every side-by-side benchmark in one process and prints the ratios (`make bench`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_bm25
import bench_dense
import bench_hostile
import bench_pack
import bench_rollout
import bench_server
import bench_stop
import bench_train
from common import machine

#: The dense server comparison: its encoder in float32 and in bfloat16 on both sides
#: (Search-R1's server encodes in fp16), under the load of benches/README.md's runs.
DENSE_SERVER = ["--dense", "--engines", "", "--clients", "8", "--requests", "4"]
DENSE_SERVER += ["--encoder-dtypes", "float32,bfloat16"]


def main() -> None:
    results = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "stop": bench_stop.main([]),
        "pack": bench_pack.main([]),
        "rollout": bench_rollout.main([]),
        "train": bench_train.main([]),
        "bm25": bench_bm25.main([]),
        "dense": bench_dense.main([]),
        "server": bench_server.main([]),
        "server_dense": bench_server.main(DENSE_SERVER),
        "server_hostile": bench_hostile.main([]),
    }
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
