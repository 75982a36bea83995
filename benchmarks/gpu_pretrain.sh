#!/usr/bin/env bash
# The pretraining path end to end through the command line, timed per step: the check that
# fit() runs on a GPU (pinned copies, bf16 autocast, fused AdamW, checkpoints) and how long
# each stage takes there.
#
#   bash benchmarks/gpu_pretrain.sh OUTDIR PROFILE N_SUBJECTS [EPOCHS] [extra pretrain flags]
#
# EPOCHS 0 = the profile's. Writes OUTDIR/pretrain-PROFILE.log; prints each stage's last
# epochs.csv row and its samples/s from steps.csv.
set -uo pipefail
out=${1:?usage: gpu_pretrain.sh OUTDIR PROFILE N [EPOCHS] [flags]}
profile=${2:?}; n=${3:?}; epochs=${4:-0}; shift $(( $# < 4 ? $# : 4 ))
py=${PYTHON:-python3}
work=$(mktemp -d)
log="$out/pretrain-$profile.log"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
timed() {  # timed NAME COMMAND...
    local name=$1; shift; local t0=$SECONDS
    "$@" >>"$log" 2>&1; local rc=$?
    echo "$profile $name: rc $rc, $((SECONDS - t0)) s" | tee -a "$log"
}
common=(--profile "$profile" --manifest "$work/cohort/manifest.csv" --data-dir "$work")
timed synth "$py" -m ecgcmr synth --profile "$profile" --n "$n" --workers "$(nproc)" \
    --out "$work/cohort"
timed preprocess "$py" -m ecgcmr preprocess "${common[@]}" --workers "$(nproc)"
train=("${common[@]}" --epochs "$epochs" --num-workers "${WORKERS:-8}" "$@")
timed "A ed" "$py" -m ecgcmr pretrain cmr --phase ed --out "$work/m/a_ed" "${train[@]}"
timed "A es" "$py" -m ecgcmr pretrain cmr --phase es --out "$work/m/a_es" "${train[@]}"
timed "B ecg" "$py" -m ecgcmr pretrain ecg --out "$work/m/b" "${train[@]}"
timed "C dual" "$py" -m ecgcmr pretrain align --out "$work/m/c" --init-ed "$work/m/a_ed/best.pt" \
    --init-es "$work/m/a_es/best.pt" --init-ecg "$work/m/b/best.pt" "${train[@]}"
timed embed "$py" -m ecgcmr embed "${common[@]}" --checkpoint "$work/m/c/best.pt" \
    --out "$work/emb.parquet"
for s in a_ed a_es b c; do
    echo "-- $s: last epoch, median samples/s of the logged windows" | tee -a "$log"
    tail -1 "$work/m/$s/epochs.csv" | tee -a "$log"
    "$py" -c "import pandas as pd, sys; s = pd.read_csv(sys.argv[1]); print('steps', len(s), 'samples/s', round(s['samples_per_s'].median(), 1))" \
        "$work/m/$s/steps.csv" | tee -a "$log"
done
rm -rf "$work"
