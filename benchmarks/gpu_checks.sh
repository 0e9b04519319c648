#!/usr/bin/env bash
# The GPU checks behind the README's "On a GPU" figures, in one go (about 4 minutes on an H100,
# 2026-11-26, the first compilation of the fused JS kernel included): the CUDA tests, the bert-90m
# audit benchmark (also timing the audit with the per-level top-p JS path instead of the fused
# kernel, --alt-js, and profiling 8 batches of it into audit_bench.err) and the bert-90m training comparison. Each
# step writes its output into OUT as it finishes, so a step that overruns keeps the earlier ones.
#
#   bash benchmarks/gpu_checks.sh OUT [STEPS]     # STEPS: any of cuda,audit,train (default all)
#   PYTHON=.venv/bin/python bash benchmarks/gpu_checks.sh OUT   # another interpreter
set -u
out=${1:?usage: gpu_checks.sh OUT [cuda,audit,train]}
steps=${2:-cuda,audit,train}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
py=${PYTHON:-python3}  # the interpreter that has torch and fmaudit
start=$(date +%s)
log() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$out/steps.txt"; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$py" -c "import sys, torch, transformers, accelerate; print(sys.version.split()[0], \
torch.__version__, transformers.__version__, accelerate.__version__, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
} 2>&1 | tee "$out/env.txt"

if [[ $steps == *cuda* ]]; then
  log "CUDA tests"
  timeout 240 "$py" -m pytest -q -p no:cacheprovider -rA tests/metrics/test_device.py \
    tests/results/test_cuda.py > "$out/cuda_tests.log" 2>&1
  log "CUDA tests: exit $?"
fi
if [[ $steps == *audit* ]]; then
  log "audit benchmark, bert-90m"
  timeout 360 "$py" benchmarks/audit_bench.py --size bert-90m --members 5 --samples 256,1024 \
    --seq-len 512 --batch-size 32 --fisher-windows 64 --bf16 --skip-training --alt-js --profile 8 --json \
    > "$out/audit_bench.json" 2> "$out/audit_bench.err"
  log "audit benchmark: exit $?"
fi
if [[ $steps == *train* ]]; then
  log "training against transformers.Trainer, bert-90m"
  timeout 180 "$py" benchmarks/train_vs_trainer.py --recipe bert-90m --steps 50 --json \
    > "$out/train_vs_trainer.json" 2> "$out/train_vs_trainer.err"
  log "training comparison: exit $?"
fi
