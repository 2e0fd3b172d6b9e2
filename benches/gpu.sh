#!/usr/bin/env bash
# The checks and timings that need a CUDA GPU, in one go (no test depends on a GPU):
#
#   1. bench_server.py --dense: the retrieval server with its encoder on the GPU against
#      the Search-R1-style reference (per-request encoding on the same GPU, faiss flat),
#      encoders in float32 and float16 (Search-R1 encodes in fp16 on a GPU);
#   2. `searchr1 train` under torchrun with FSDP2 on NCCL and bf16 autocast, on the toy
#      world that `make demo` leaves in runs/toy: 2 steps, cut, then resumed to 4;
#   3. bench_train.py: where a GRPO step's time goes, and the step time of a randomly
#      initialised Qwen2.5-0.5B-shaped model in bf16.
#
# Usage: benches/gpu.sh [LOG_DIR]   (logs default to bench-results/gpu). Environment:
#   GPU_THREADS  CPU threads for the servers' search and faiss (default: all cores)
#   GPU_STAGES   which of the stages to run, e.g. "1 3" (default: "1 2 3")
#   GPU_SERVER_ENCODER  stage 1's encoder directory (default: all-MiniLM-L6-v2)
#   GPU_SERVER_ARGS     more options for bench_server.py
#   PYTHON       the interpreter (default: .venv/bin/python if there, else python3)
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${1:-bench-results/gpu}
THREADS=${GPU_THREADS:-$(nproc)}
STAGES=${GPU_STAGES:-1 2 3}
DEFAULT_PY=python3
[[ -x .venv/bin/python ]] && DEFAULT_PY=.venv/bin/python
PY=${PYTHON:-$DEFAULT_PY}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
failed=()

stage() {  # stage N NAME SECONDS CMD...: runs CMD under a time limit, logs to LOGS/NAME.log
    local n=$1 name=$2 limit=$3
    shift 3
    [[ " $STAGES " == *" $n "* ]] || return 0
    echo "== $n. $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > >(tee "$LOGS/$name.log") 2>&1
    local rc=$?
    echo "== $n. $name: exit $rc after $((SECONDS - start)) s"
    ((rc == 0)) || failed+=("$name (exit $rc)")
}

train_fsdp() {
    set -o pipefail
    local out
    out=$(mktemp -d)/fsdp-run  # checkpoints stay out of the logs
    local cmd=("$PY" -m torch.distributed.run --standalone --nproc-per-node=1 -m searchr1 train
        --config configs/toy.yaml --set model.device=cuda --set model.fsdp=true
        --set run.output_dir="$out" --set run.save_every=2 --set run.eval_every=2
        --set run.progress=false)
    "${cmd[@]}" --set run.total_steps=2 2>&1 | tee "$out.log" || return
    "${cmd[@]}" --set run.total_steps=4 --resume 2>&1 | tee -a "$out.log" || return
    local want="train: 1 torchrun rank on cuda, FSDP2 shards, bf16 autocast, hf engine"
    [[ $(grep -c "^$want\$" "$out.log") == 2 ]] || { echo "not both runs said: $want"; return 1; }
    "$PY" - "$out" <<'EOF'
import json, math, sys
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl")]
assert [r["step"] for r in rows] == [1, 2, 3, 4], [r["step"] for r in rows]
for r in rows:
    assert all(math.isfinite(v) for v in r.values() if isinstance(v, float)), r
    print({k: round(r[k], 4) for k in ("step", "reward", "kl", "entropy", "grad_norm") if k in r})
EOF
    cp "$out/metrics.jsonl" "$LOGS/train-fsdp-metrics.jsonl"
}

"$PY" - <<'EOF'
import torch, transformers
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"CUDA {torch.cuda.is_available()} {torch.cuda.get_device_name() if torch.cuda.is_available() else ''}")
EOF
[[ -d runs/toy/sft-model ]] || echo "runs/toy is missing: run 'make demo' first (stage 2 needs it)"
stage 1 bench-server-gpu 240 "$PY" benches/bench_server.py --dense --engines "" \
    --threads "$THREADS" --encoder-dtypes float32,float16 \
    ${GPU_SERVER_ENCODER:+--encoder "$GPU_SERVER_ENCODER"} ${GPU_SERVER_ARGS:-}
export -f train_fsdp
export LOGS PY
stage 2 train-fsdp-nccl 150 bash -c train_fsdp
stage 3 bench-train 200 "$PY" benches/bench_train.py --steps 3
if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all stages passed; logs in $LOGS"
