#!/usr/bin/env bash
# A lent GPU's second prepared script: finish a run started on a CPU, then score every model's samplers
# against network calls in one run (issues 23 and 24). Sized for one device call (≤ 600 s).
#
#   OUT=/some/dir RUN=runs/<run> bash scripts/gpu_resume_sweep.sh       # on the GPU machine, repo root
#   OUT=/some/dir bash scripts/gpu_resume_sweep.sh                      # no run to finish: the sweep alone
#   OUT=/tmp/gpu_out RUN=<a small run> QUICK=1 bash scripts/gpu_resume_sweep.sh   # CPU check at tiny sizes
#
# Stages:
#   info    nvidia-smi -L and torch's name for the device
#   train   python -m mnistdiff train KIND --profile PROFILE --resume RUN --device DEVICE (timeout TRAIN_BUDGET);
#           the final model is copied to checkpoints/PROFILE/KIND.safetensors (there, for the sweep) and to $OUT
#   sweep   benchmarks/nfe_sweep.py over MODELS (the trained one first) into a fresh $OUT/nfe_sweep.json, n = N,
#           fp32, until the total budget is spent (the file is rewritten after every configuration)
#
# What comes back (the device tool returns at most 8 files of ≤ 16 MiB): gpu.log; KIND.safetensors;
# run_meta.tar.gz (the run's logs, sample grids, last.json, no weights); snapshots_a/b.tar (the EMA snapshots the
# run wrote here); resume.tar (last.pt + last.json) only when the training did not finish; nfe_sweep.json.
set -uo pipefail
QUICK=${QUICK:-0}
KIND=${KIND:-flow}
PROFILE=${PROFILE:-book}
RUN=${RUN:-}  # empty: no training, the sweep alone (MODELS)
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 MPLBACKEND=Agg PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$QUICK" = 1 ]; then
  DEVICE=cpu TOTAL_BUDGET=${TOTAL_BUDGET:-300} TRAIN_BUDGET=${TRAIN_BUDGET:-120} N=${N:-64} NFE=${NFE:-4}
  CKPT=${CKPT:-$(mktemp -d)}  # never overwrite the repository's models with tiny ones
else
  DEVICE=cuda TOTAL_BUDGET=${TOTAL_BUDGET:-520} TRAIN_BUDGET=${TRAIN_BUDGET:-300} N=${N:-2000}
  NFE=${NFE:-4 8 10 16 32 50 64}
  CKPT=${CKPT:-checkpoints/$PROFILE}
fi
MODELS=${MODELS:-checkpoints/$PROFILE/ddpm.safetensors checkpoints/$PROFILE/ldm.safetensors}
VAE=${VAE:-checkpoints/$PROFILE/vae.safetensors}
START=$(date +%s)
exec > >(tee -a "$OUT/gpu.log") 2>&1
log() { printf '[gpu %s +%4ds] %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - START))" "$*"; }
left() { echo $((START + TOTAL_BUDGET - $(date +%s))); }

log "info"
{ command -v nvidia-smi >/dev/null && nvidia-smi -L; } || echo "nvidia-smi: not available"
"$PY" -c "import torch; from mnistdiff.devices import device_name; print('torch', torch.__version__, '|', device_name('$DEVICE'))"

train_stage() {
  log "train: $KIND --resume $RUN on $DEVICE (timeout $TRAIN_BUDGET s)"
  timeout --signal=TERM --kill-after=20 "$TRAIN_BUDGET" "$PY" -m mnistdiff train "$KIND" --profile "$PROFILE" \
    --resume "$RUN" --device "$DEVICE" --quiet
  rc=$?
  log "train: exit $rc"
  if (( rc != 0 && rc != 124 && rc != 137 )); then log "training failed: stopping here (fix, then call again)"; return "$rc"; fi
  tail -n 20 "$RUN/training_log.txt"
  (cd "$RUN" && find . -type f ! -name '*.pt' ! -name '*.safetensors' ! -name '*.tmp' | tar -czf "$OUT/run_meta.tar.gz" -T -)
  snaps=$(cd "$RUN" && find snapshots -name '*.safetensors' 2>/dev/null | sort)  # RUN travels without its old ones
  if [ -n "$snaps" ]; then
    half=$(( ($(echo "$snaps" | wc -l) + 1) / 2 ))
    (cd "$RUN" && echo "$snaps" | head -n "$half" | tar -cf "$OUT/snapshots_a.tar" -T -)
    (cd "$RUN" && echo "$snaps" | tail -n +"$((half + 1))" | tar -cf "$OUT/snapshots_b.tar" -T -)
  fi
  MODEL_FILE="$RUN/checkpoints/model.safetensors"
  if [ -f "$MODEL_FILE" ]; then
    cp "$MODEL_FILE" "$OUT/$KIND.safetensors"
    mkdir -p "$CKPT" && cp "$MODEL_FILE" "$CKPT/$KIND.safetensors"
    MODELS="$CKPT/$KIND.safetensors $MODELS"
    log "model: $CKPT/$KIND.safetensors"
  else
    (cd "$RUN/checkpoints" && tar -cf "$OUT/resume.tar" last.pt last.json)
    log "training not finished: resume.tar holds its state"
  fi
}
if [ -n "$RUN" ]; then
  train_stage || exit $?
elif [ -f "$CKPT/$KIND.safetensors" ]; then
  MODELS="$CKPT/$KIND.safetensors $MODELS"  # no run to finish: the committed model is swept first
fi

t=$(( $(left) - 15 ))
if (( t > 30 )); then
  args=()
  for m in $MODELS; do args+=(--model "$m"); done
  log "sweep: ${args[*]} (timeout $t s)"
  # shellcheck disable=SC2086  # NFE is a list
  timeout --signal=TERM --kill-after=10 "$t" "$PY" benchmarks/nfe_sweep.py "${args[@]}" --vae "$VAE" --n "$N" \
    --nfe $NFE --precision fp32 --device "$DEVICE" --out "$OUT/nfe_sweep.json"
  log "sweep: exit $?"
fi
log "done"; ls -l "$OUT"
