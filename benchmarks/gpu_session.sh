#!/usr/bin/env bash
# All GPU benchmarks in one command, for a lent GPU machine (one call, a few minutes).
#
#   bash benchmarks/gpu_session.sh OUTDIR [PROFILE] [N_SUBJECTS]
#
# Runs, in order, each with its own time limit so one slow step cannot eat the rest:
#   1. train_step.py on random data: the step split, FLOPs and MFU, eager, channels_last_3d
#      and torch.compile,
#      and the ECG MAE stage at bigger batches (how MFU grows with work per step);
#   2. a synthetic cohort of N_SUBJECTS and its PROFILE cache (16 processes), timed;
#   3. data_pipeline.py on that cache: DataLoader samples/s per worker count vs raw reads;
#   4. train_step.py on that cache (real batches, 8 workers): the data wait share;
#   5. memory.py: peak host RSS and GPU memory of each stage's step.
# Every script also runs on CPU; this file only chains them with GPU-sized settings.
# Needs python3 with torch (the machine's) plus the project's other imports on PYTHONPATH.
set -uo pipefail
out=${1:?usage: gpu_session.sh OUTDIR [PROFILE] [N_SUBJECTS]}
profile=${2:-paper}
n=${3:-1024}
mkdir -p "$out"
work=$(mktemp -d)
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/log.txt
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$out/log.txt"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$out/log.txt"
    echo "=== $name: rc ${PIPESTATUS[0]}, $((SECONDS - t0)) s" | tee -a "$out/log.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    2>&1 | tee -a "$out/log.txt"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    | tee -a "$out/log.txt"

step train_step_random 200 "$py" benchmarks/train_step.py --profile "$profile" --steps 20 \
    --warmup 3 --modes eager,channels_last,compile --out "$out"
step train_step_ecg_batch 90 "$py" benchmarks/train_step.py --profile "$profile" --stages ecg \
    --batch 256 --steps 20 --warmup 3 --out "$out/ecg_b256"
step synth 100 "$py" -m ecgcmr synth --profile "$profile" --n "$n" --workers 16 \
    --out "$work/cohort"
step preprocess 100 "$py" -m ecgcmr preprocess --profile "$profile" --workers 16 \
    --manifest "$work/cohort/manifest.csv" --cache-dir "$work/cache"
cache=$work/cache
du -sh "$work/cohort" "$cache" 2>&1 | tee -a "$out/log.txt"
step data_pipeline 120 "$py" benchmarks/data_pipeline.py --profile "$profile" --cache "$cache" \
    --workers 0,4,8,16 --augment on --samples 2048 --evict --out "$out"
step train_step_cache 90 "$py" benchmarks/train_step.py --profile "$profile" --cache "$cache" \
    --workers 8 --steps 30 --warmup 5 --out "$out/cache"
step memory 90 "$py" benchmarks/memory.py --profile "$profile" --step-profiles "$profile" \
    --manifest "$work/cohort/manifest.csv" --n 256 --out "$out"
rm -rf "$work"
