#!/usr/bin/env bash
# The one prepared script for a lent GPU (issue 6): benchmark, train DDPM + VAE + LDM, evaluate.
#
#   OUT=/some/dir bash scripts/gpu_run.sh             # on the GPU machine, from the repository root
#   OUT=/tmp/gpu_out QUICK=1 bash scripts/gpu_run.sh  # CPU check of the script at tiny sizes (≈ 2-4 min)
#   (--quick does the same as QUICK=1)
#
# Sized for one device call (≤ 600 s; a session has 15 min of device time, the machine's start
# included): the whole run stops itself after TOTAL_BUDGET seconds (560 on a GPU). Stages, in order:
#
#   info           nvidia-smi, torch/CUDA/cuDNN/Triton versions, the GPU's name; installs carried wheels
#   bench          benchmarks/bench_throughput.py at full sizes (its own --time-budget; JSON after every figure)
#   classifier     only if mnistdiff/assets/classifier.pt is missing: scripts/train_classifier.py (GPU)
#   vae            python -m mnistdiff train vae --profile full <fast settings>
#   ldm            python -m mnistdiff train ldm checkpoints/full/vae.safetensors --profile full <fast settings>
#   sample_ldm     python -m mnistdiff sample ldm ... 10,000 images, DDIM-50;  evaluate_ldm: ... evaluate
#   ddpm           python -m mnistdiff train ddpm --profile full <fast settings> --compile
#                  (last of the three: it is the largest, and gets the time left less its evaluation's)
#   sample_ddpm    python -m mnistdiff sample ddpm ... 10,000 images, DDIM-50; evaluate_ddpm: ... evaluate
#
# After each training stage the final model.safetensors is copied to checkpoints/full/{ddpm,vae,ldm}.safetensors
# (QUICK: to a scratch folder, never into the repository). Each stage is timed and logged; a failed or
# timed-out stage is recorded and the later stages still run (LDM and its evaluation need the VAE).
#
# What comes back (the device tool returns at most 8 files of ≤ 16 MiB from $OUT), refreshed after
# every stage so that a run cut short still returns what it finished:
#   $OUT/gpu_run.log                 everything printed
#   $OUT/summary.json                stages (status, seconds), device, benchmark summary, training and
#                                    evaluation metrics, whether each checkpoint's config equals profiles.FULL
#   $OUT/benchmark.json              the benchmark's JSON (copy it to results/full/benchmark.json)
#   $OUT/checkpoints_{ddpm,vae,ldm}.tar.gz   checkpoints/full/<kind>.safetensors (untar in the repo root)
#   $OUT/artifacts.tar.gz            experiment folders (logs, loss curves, sample grids; no weights),
#                                    samples (grid.png, samples.npz, eval.json), stage logs
#   $OUT/classifier.tar.gz           only when the classifier had to be trained here
#
# Settings (environment variables; defaults in brackets are GPU / QUICK):
#   TOTAL_BUDGET [560 / 420] s        BENCH_BUDGET [170 / 150] s     STAGES [info,bench,classifier,ddpm,vae,ldm,eval]
#   DDPM_ARGS, VAE_ARGS, LDM_ARGS     training options (GPU defaults below: the proposed "fast full" profile)
#   DDPM_BATCH [1024]: the DDPM's batch, also the benchmark's large training batch (shared compile cache)
#   DDPM_COMPILE [1] VAE_COMPILE [0] LDM_COMPILE [0]    add --compile (GPU only)
#   EVAL_SAMPLES [10000 / 32]  SAMPLE_BATCH [2000 / 32]  DDIM_STEPS [50 / 5]
#   BENCH_ARGS                        extra benchmark options    WHEELS_DIR [.whl]: wheels to install first
#   PYTHON [python3]  WORK [mktemp -d]: scratch folder   CKPT_DIR [checkpoints/full / $WORK/checkpoints/full]
set -euo pipefail

# ------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------
QUICK=${QUICK:-0}
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "gpu_run.sh: unknown argument $arg (use --quick or QUICK=1)" >&2; exit 2 ;;
  esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-$(mktemp -d /tmp/mnistdiff-gpu-run.XXXXXX)}
mkdir -p "$WORK/logs" "$WORK/experiments" "$WORK/samples"
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 MPLBACKEND=Agg
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # run the package from this checkout, installed or not

if [ "$QUICK" = 1 ]; then
  TOTAL_BUDGET=${TOTAL_BUDGET:-420}
  BENCH_BUDGET=${BENCH_BUDGET:-150}
  DEVICE=cpu
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # small CPU jobs on a shared machine: one thread contends least
  CKPT_DIR=${CKPT_DIR:-$WORK/checkpoints/full}  # never overwrite the repository's checkpoints with tiny ones
  TINY="--profile smoke --epochs 1 --subset 128 --batch_size 64 --sample_every 1 --device cpu"
  DDPM_ARGS=${DDPM_ARGS:-$TINY}
  VAE_ARGS=${VAE_ARGS:-$TINY}
  LDM_ARGS=${LDM_ARGS:-$TINY}
  DDPM_COMPILE=0 VAE_COMPILE=0 LDM_COMPILE=0
  EVAL_SAMPLES=${EVAL_SAMPLES:-32}
  SAMPLE_BATCH=${SAMPLE_BATCH:-32}
  DDIM_STEPS=${DDIM_STEPS:-5}
  # the benchmark's own test (tests/test_benchmarks.py) covers every mode; here: that the stage runs
  BENCH_CMD=(benchmarks/bench_throughput.py --quick --device cpu --models ours --train-modes fp32_eager
             --sample-modes fp32_eager)
else
  TOTAL_BUDGET=${TOTAL_BUDGET:-560}
  BENCH_BUDGET=${BENCH_BUDGET:-170}
  DEVICE=${DEVICE:-cuda}
  CKPT_DIR=${CKPT_DIR:-$REPO/checkpoints/full}
  # The proposed "fast full" training settings (see benchmarks/README.md); keep them equal to the
  # run configs' defaults in mnistdiff/config.py (= profiles.FULL) so that the notebooks accept these
  # checkpoints (summary.json says, per checkpoint, whether they do).
  DDPM_BATCH=${DDPM_BATCH:-1024}
  DDPM_ARGS=${DDPM_ARGS:---profile full --epochs 20 --batch_size $DDPM_BATCH --lr 2e-3 --sample_every 5}
  VAE_ARGS=${VAE_ARGS:---profile full --epochs 15 --batch_size 512 --lr 5e-4 --sample_every 5}
  LDM_ARGS=${LDM_ARGS:---profile full --epochs 40 --batch_size 1024 --lr 2e-3 --sample_every 10}
  DDPM_COMPILE=${DDPM_COMPILE:-1}
  VAE_COMPILE=${VAE_COMPILE:-0}
  LDM_COMPILE=${LDM_COMPILE:-0}
  EVAL_SAMPLES=${EVAL_SAMPLES:-10000}
  SAMPLE_BATCH=${SAMPLE_BATCH:-2000}
  DDIM_STEPS=${DDIM_STEPS:-50}
  # ours and diffusers (if importable), every training mode at batch 128 and at the DDPM run's batch
  # (its compilation then hits inductor's on-disk cache when the DDPM trains: ~1 min saved); if time
  # is left, batch 4096 and ours_gn32 (the GroupNorm32 lever). Sampling: 10k images in batches of
  # 5000, without the plain-compile mode (the CUDA-graph mode compiles too).
  BENCH_CMD=(benchmarks/bench_throughput.py --device "$DEVICE" --models ours,diffusers,ours_gn32
             --train-batch "$DDPM_BATCH" --extra-train-batches 4096
             --sample-modes fp32_eager,bf16_cl_eager,bf16_cl_cudagraphs
             --sample-batch 5000)
fi
STAGES=${STAGES:-info,bench,classifier,ddpm,vae,ldm,eval}
PROFILE_NAME=$([ "$QUICK" = 1 ] && echo smoke || echo full)
mkdir -p "$CKPT_DIR"
CKPT_DIR=$(cd "$CKPT_DIR" && pwd)

START=$(date +%s)
DEADLINE=$((START + TOTAL_BUDGET))
STAGES_TSV="$WORK/stages.tsv"
: > "$STAGES_TSV"
exec > >(tee -a "$OUT/gpu_run.log") 2>&1

log() { printf '[gpu_run %s +%4ds] %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - START))" "$*"; }
want() { [[ ",$STAGES," == *",$1,"* ]]; }
remaining() { echo $((DEADLINE - $(date +%s))); }
record() {  # name status rc seconds note
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >> "$STAGES_TSV"
  log "stage $1: $2 (rc $3, $4 s)${5:+ — $5}"
}

# run_stage NAME CAP RESERVE CMD...: run CMD with a timeout of min(CAP, time left − RESERVE) seconds
# (RESERVE: what the later stages need at least); skip it when less than MIN_STAGE seconds are left.
MIN_STAGE=${MIN_STAGE:-15}
run_stage() {
  local name=$1 cap=$2 reserve=$3; shift 3
  local left=$(( $(remaining) - reserve )) t rc t0 secs
  t=$(( cap < left ? cap : left ))
  if (( t < MIN_STAGE )); then
    record "$name" skipped - 0 "time guard: $(remaining) s left, $reserve s reserved for later stages"
    return 1
  fi
  log "stage $name: start (timeout ${t} s): $*"
  t0=$(date +%s)
  set +e
  timeout --signal=TERM --kill-after=20 "$t" "$@" 2>&1 | tee "$WORK/logs/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  secs=$(( $(date +%s) - t0 ))
  if (( rc == 0 )); then
    record "$name" ok "$rc" "$secs"
  elif (( rc == 124 || rc == 137 )); then
    record "$name" timeout "$rc" "$secs" "stopped after ${t} s"
  else
    record "$name" failed "$rc" "$secs" "see logs/$name.log"
  fi
  return "$rc"
}

stage_ok() { awk -F'\t' -v n="$1" '$1 == n {s = $2} END {exit !(s == "ok")}' "$STAGES_TSV"; }

# ------------------------------------------------------------------------------------------------
# Packing what comes back (≤ 8 files, ≤ 16 MiB each); refreshed after every stage
# ------------------------------------------------------------------------------------------------
write_summary() {
  "$PY" - "$WORK" "$OUT" "$CKPT_DIR" "$START" "$TOTAL_BUDGET" "$QUICK" <<'PYEOF' || log "summary.json could not be written"
import json, os, sys, time
from pathlib import Path
work, out, ckpt = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
start, budget, quick = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"

def load(path):
    try:
        return json.loads(Path(path).read_text())
    except Exception:
        return None

stages = []
for line in (work / "stages.tsv").read_text().splitlines():
    name, status, rc, secs, note = (line.split("\t") + [""] * 5)[:5]
    stages.append({"name": name, "status": status, "rc": rc, "seconds": int(secs) if secs.isdigit() else secs, "note": note})
info = load(work / "device.json") or {}
bench = load(out / "benchmark.json") or {}
training, evaluation = {}, {}
for kind in ("ddpm", "vae", "ldm"):
    side = None
    if (ckpt / f"{kind}.safetensors").is_file():
        from mnistdiff.modelfile import read_model_meta
        side = read_model_meta(ckpt / f"{kind}.safetensors")
    if side:
        m = side.get("metrics", {})
        training[kind] = {k: m.get(k) for k in ("parameters", "epochs", "training_seconds", "train_images_per_second",
                                                "final_train_loss", "final_eval_loss", "peak_memory_mib", "gpu_name",
                                                "test_reconstruction_mse", "ddpm_sampling_seconds")}
        training[kind]["train_config"] = side.get("config", {}).get("train")
        training[kind]["config_matches_profile"] = (load(work / f"config_{kind}.json") or {}).get("matches")
        training[kind]["config_differences"] = (load(work / f"config_{kind}.json") or {}).get("differences")
for kind in ("ddpm", "ldm"):
    ev = load(work / "samples" / kind / "eval.json")
    if ev:
        m = ev.get("metrics", {})
        evaluation[kind] = {k: m.get(k) for k in ("n", "fid", "kid", "precision", "recall", "confidence", "class_entropy",
                                                  "nn_train_distance")}
        floor = ev.get("real_floor") or {}
        evaluation[kind]["real_floor_fid"] = floor.get("fid")
secs = {s["name"]: s["seconds"] for s in stages if isinstance(s["seconds"], int)}
train_wall = sum(secs.get(k, 0) for k in ("ddpm", "vae", "ldm"))
doc = {
    "script": "scripts/gpu_run.sh", "quick": quick, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    "device_name": info.get("device_name"), "torch": info.get("torch"), "elapsed_seconds": int(time.time()) - start,
    "total_budget_seconds": budget, "stages": stages,
    "training_wall_seconds_ddpm_vae_ldm": train_wall,
    "training_fit_seconds_ddpm_vae_ldm": round(sum((t.get("training_seconds") or 0) for t in training.values()), 1),
    "target_training_seconds": 300,
    "benchmark_summary": bench.get("summary"), "training": training, "evaluation": evaluation,
}
(out / "summary.json.tmp").write_text(json.dumps(doc, indent=2) + "\n")
os.replace(out / "summary.json.tmp", out / "summary.json")
PYEOF
}

pack_artifacts() {
  # experiments without weights (they travel in checkpoints_*.tar.gz), samples, stage logs
  local list="$WORK/artifacts.list"
  (cd "$WORK" && find experiments samples logs stages.tsv device.json config_*.json -type f \
      ! -name 'last.pt' ! -name 'last.json' ! -name 'model.safetensors' ! -name '*.tmp' 2>/dev/null) > "$list" || true
  tar -C "$WORK" -czf "$OUT/artifacts.tar.gz.tmp" -T "$list" 2>/dev/null || true
  if [ -f "$OUT/artifacts.tar.gz.tmp" ] && (( $(stat -c %s "$OUT/artifacts.tar.gz.tmp") > 16000000 )); then
    log "artifacts.tar.gz over 16 MB: leaving out samples.npz and PDFs"
    grep -v -e 'samples\.npz$' -e '\.pdf$' "$list" > "$list.small" || true
    tar -C "$WORK" -czf "$OUT/artifacts.tar.gz.tmp" -T "$list.small" 2>/dev/null || true
  fi
  [ -f "$OUT/artifacts.tar.gz.tmp" ] && mv -f "$OUT/artifacts.tar.gz.tmp" "$OUT/artifacts.tar.gz"
  return 0
}

pack_checkpoint() {  # kind
  local kind=$1 dest="$OUT/checkpoints_$1.tar.gz"
  [ -f "$CKPT_DIR/$kind.safetensors" ] || return 0
  # paths inside: checkpoints/full/KIND.safetensors (CKPT_DIR's last two folders): untar in the repo root
  local base rel
  base=$(dirname "$(dirname "$CKPT_DIR")")
  rel="$(basename "$(dirname "$CKPT_DIR")")/$(basename "$CKPT_DIR")"
  tar -C "$base" -czf "$dest.tmp" "$rel/$kind.safetensors"
  mv -f "$dest.tmp" "$dest"
  if (( $(stat -c %s "$dest") > 16777216 )); then
    log "WARNING: $dest is over 16 MiB and will not come back from the device machine"
  fi
}

refresh() { write_summary; pack_artifacts; }

# ------------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------------
log "mnistdiff gpu_run: QUICK=$QUICK, OUT=$OUT, WORK=$WORK, checkpoints → $CKPT_DIR, budget ${TOTAL_BUDGET} s"
log "stages: $STAGES"
export PY WORK

info_cmd() {
  { command -v nvidia-smi >/dev/null && nvidia-smi; } || echo "nvidia-smi: not available"
  echo "--- host: $(nproc --all) CPUs; $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB memory"}'); disk: $(df -h . | awk 'NR==2 {print $4 " free"}')"
  "$PY" - "$WORK/device.json" <<'PYEOF'
import json, platform, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device_name=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                multiprocessors=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1))
else:
    info["device_name"] = "CPU (" + (platform.processor() or platform.machine()) + f", {torch.get_num_threads()} threads)"
from importlib import metadata  # versions without importing (fast)
for dist in ("triton", "diffusers", "numpy", "torchvision", "matplotlib", "scikit-learn", "nbclient"):
    try:
        info[dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
        info[dist] = "not installed"
print(json.dumps(info, indent=2))
json.dump(info, open(sys.argv[1], "w"), indent=2)
PYEOF
}
export -f info_cmd

# The smallest time each later stage needs: what a stage leaves for the ones after it.
R_VAE=40 R_LDM=50 R_EVAL_LDM=40 R_DDPM=90 R_EVAL_DDPM=60
[ "$QUICK" = 1 ] && { R_VAE=20 R_LDM=20 R_EVAL_LDM=30 R_DDPM=30 R_EVAL_DDPM=30; }

if want info; then
  WHEELS_DIR=${WHEELS_DIR:-.whl}
  if compgen -G "$WHEELS_DIR/*.whl" >/dev/null; then
    log "installing carried wheels from $WHEELS_DIR (e.g. diffusers for the comparison)"
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS_DIR"/*.whl; then
      export PYTHONPATH="$PYTHONPATH:/tmp/site"
    else
      log "wheel install failed: the diffusers comparison will be skipped"
    fi
  fi
  run_stage info 120 0 bash -c info_cmd || true
  refresh
fi

if want bench; then
  # the benchmark starts no measurement in its stage's last 40 s; its JSON is rewritten after
  # every figure, so a timeout still leaves every figure measured so far
  run_stage bench "$BENCH_BUDGET" $((R_VAE + R_LDM + R_EVAL_LDM + R_DDPM + R_EVAL_DDPM)) \
    "$PY" "${BENCH_CMD[@]}" --out "$OUT/benchmark.json" --time-budget $((BENCH_BUDGET - 40)) ${BENCH_ARGS:-} || true
  refresh
fi

if want classifier && [ ! -f mnistdiff/assets/classifier.pt ]; then
  if [ "$QUICK" = 1 ]; then
    record classifier skipped - 0 "mnistdiff/assets/classifier.pt is missing; QUICK does not train it (evaluation will fail)"
  else
    # evaluation needs the metric classifier; train it here (seconds on a GPU) and send it back
    run_stage classifier 90 $((R_VAE + R_LDM + R_EVAL_LDM + R_DDPM + R_EVAL_DDPM)) \
      "$PY" scripts/train_classifier.py --device "$DEVICE" || true
    if [ -f mnistdiff/assets/classifier.pt ]; then
      tar -czf "$OUT/classifier.tar.gz" mnistdiff/assets/classifier.pt mnistdiff/assets/classifier.json || true
    fi
  fi
  refresh
fi

# train KIND COMPILE RESERVE CAP ARGS...: train with the repo's command, copy the final model to
# $CKPT_DIR/KIND.safetensors, check its config against the profile, pack it.
train() {
  local kind=$1 compile=$2 reserve=$3 cap=$4; shift 4
  local extra=()
  [ "$compile" = 1 ] && extra+=(--compile)
  [ "$QUICK" = 1 ] || extra+=(--device "$DEVICE")
  if ! run_stage "$kind" "$cap" "$reserve" "$PY" -m mnistdiff train "$kind" "$@" "${extra[@]}" \
        --out "$WORK/experiments" --quiet; then
    return 0
  fi
  local exp
  exp=$(sed -n 's/^experiment: //p' "$WORK/logs/$kind.log" | tail -n 1)
  if [ -z "$exp" ] || [ ! -f "$exp/checkpoints/model.safetensors" ]; then
    record "$kind-copy" failed 1 0 "no model.safetensors found (experiment: ${exp:-?})"
    return 0
  fi
  cp "$exp/checkpoints/model.safetensors" "$CKPT_DIR/$kind.safetensors.tmp" \
    && mv -f "$CKPT_DIR/$kind.safetensors.tmp" "$CKPT_DIR/$kind.safetensors"
  log "copied $exp/checkpoints/model.safetensors → $CKPT_DIR/$kind.safetensors"
  "$PY" - "$kind" "$CKPT_DIR/$kind.safetensors" "$PROFILE_NAME" "$WORK/config_$kind.json" <<'PYEOF' || true
import json, sys
from mnistdiff.config import to_dict
from mnistdiff.course.profiles import PROFILES
from mnistdiff.modelfile import read_model_meta
kind, model_file, profile, out = sys.argv[1:5]
found = read_model_meta(model_file)["config"]
expected = json.loads(json.dumps(to_dict(getattr(PROFILES[profile], kind))))
diffs = [f"{section}.{k}: profile {expected[section].get(k)!r}, trained {v!r}"
         for section in found if isinstance(found[section], dict)
         for k, v in found[section].items() if expected.get(section, {}).get(k) != v]
diffs += [f"{k}: profile {expected.get(k)!r}, trained {v!r}" for k, v in found.items()
          if not isinstance(v, dict) and expected.get(k) != v]
usable = not [d for d in diffs if not d.startswith("train.")]  # pretrained._usable ignores the train section
res = {"kind": kind, "profile": profile, "matches": not diffs, "usable_by_notebooks": usable, "differences": diffs}
json.dump(res, open(out, "w"), indent=2)
print(f"[gpu_run] {kind}: config {'equals' if not diffs else 'differs from'} profiles.{profile.upper()}"
      + ("" if not diffs else ": " + "; ".join(diffs))
      + f" — the notebooks {'will' if usable else 'will NOT'} load it (architecture and schedule must match)")
PYEOF
  pack_checkpoint "$kind"
}

# sample_eval KIND RESERVE_AFTER: 10k DDIM samples with the repo's sample command, then evaluate them.
sample_eval() {
  local kind=$1 reserve=$2 dir="$WORK/samples/$1" model_args
  if [ "$kind" = ldm ]; then
    model_args=(ldm "$CKPT_DIR/vae.safetensors" "$CKPT_DIR/ldm.safetensors")
  else
    model_args=(ddpm "$CKPT_DIR/ddpm.safetensors")
  fi
  if [ ! -f "$CKPT_DIR/$kind.safetensors" ]; then
    record "sample_$kind" skipped - 0 "no $kind checkpoint"
    return 0
  fi
  local dev=()
  [ "$QUICK" = 1 ] && dev=(--device cpu) || dev=(--device "$DEVICE")
  if run_stage "sample_$kind" 120 $((reserve + 25)) "$PY" -m mnistdiff sample "${model_args[@]}" \
       --num_samples "$EVAL_SAMPLES" --sampler ddim --steps "$DDIM_STEPS" --batch_size "$SAMPLE_BATCH" \
       --individual 0 --seed 0 --out "$dir" "${dev[@]}"; then
    run_stage "evaluate_$kind" 120 "$reserve" "$PY" -m mnistdiff evaluate "$dir/samples.npz" \
      --out "$dir/eval.json" "${dev[@]}" || true
  fi
}

# VAE and latent diffusion first (small and predictable), then the DDPM gets what is left.
if want vae; then
  train vae "$VAE_COMPILE" $((R_LDM + R_EVAL_LDM + R_DDPM + R_EVAL_DDPM)) 120 $VAE_ARGS
  refresh
fi
if want ldm; then
  if [ -f "$CKPT_DIR/vae.safetensors" ]; then
    train ldm "$LDM_COMPILE" $((R_EVAL_LDM + R_DDPM + R_EVAL_DDPM)) 150 "$CKPT_DIR/vae.safetensors" $LDM_ARGS
  else
    record ldm skipped - 0 "no VAE checkpoint at $CKPT_DIR/vae.safetensors"
  fi
  refresh
fi
if want eval; then
  sample_eval ldm $((R_DDPM + R_EVAL_DDPM))
  refresh
fi
if want ddpm; then
  train ddpm "$DDPM_COMPILE" "$R_EVAL_DDPM" 400 $DDPM_ARGS
  refresh
fi
if want eval; then
  sample_eval ddpm 0
  refresh
fi

# ------------------------------------------------------------------------------------------------
# Done: a table of the stages and what came back
# ------------------------------------------------------------------------------------------------
log "finished in $(( $(date +%s) - START )) s of a ${TOTAL_BUDGET}-s budget"
printf '\n%-18s %-8s %4s %6s  %s\n' stage status rc secs note
while IFS=$'\t' read -r name status rc secs note; do
  printf '%-18s %-8s %4s %6s  %s\n' "$name" "$status" "$rc" "$secs" "$note"
done < "$STAGES_TSV"
echo
ls -l "$OUT"
n_files=$(find "$OUT" -type f | wc -l)
(( n_files <= 8 )) || log "WARNING: $n_files files under OUT; the device tool returns at most 8"
failed=$(awk -F'\t' '$2 != "ok" && $2 != "skipped"' "$STAGES_TSV" | wc -l)
log "$failed stage(s) failed or timed out (details: summary.json, logs/ in artifacts.tar.gz)"
exit $(( failed > 0 ? 1 : 0 ))
