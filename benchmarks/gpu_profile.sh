#!/usr/bin/env bash
# Issue #5 on one GPU (H100/H200): DiT-XL/2 shapes with random weights at 256x256 and 512x512 (latent 32 and 64),
# patch sizes 2 and 4, bf16, batch 2 (one CFG step), torch.compile on and off; then whole sampling runs of the
# schedules 250/250, 130/130 and 70/70 at batch 8 (256x256, bf16, both packings). Writes one CSV per run, the merged
# OUTDIR/profile.csv, OUTDIR/roofline.png and OUTDIR/latency_vs_flops.png, and prints the acceptance check
# (512x512, bf16, compiled: weak/powerful latency ratio <= FLOPs ratio + 0.05). Budget: inside 8 minutes; each
# compiled run compiles twice (once per patch size), and the elapsed time of every step is printed.
#
#   bash .ci/install && bash benchmarks/gpu_profile.sh OUTDIR
set -euo pipefail
OUT=${1:?usage: bash benchmarks/gpu_profile.sh OUTDIR}
cd "$(dirname "$0")/.."
ROOT=$(pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# The project's venv, or (on a machine that brings its own CUDA torch) PY=python3 with flexcli on PYTHONPATH.
PY=${PY:-$ROOT/.venv/bin/python}
FLEXCLI=("$PY" -m flexcli)
START=$SECONDS

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"  || true
  git -C "$ROOT" rev-parse HEAD || true; } > "$OUT/environment.txt" 2>&1

COMMON=(--model DiT-XL/2 --patch-sizes 2,4 --dtype bf16 --device cuda --batch 2 --repeats 100 --warmup 10 --force)
# The acceptance row (512, compiled) first, so that it is measured even if the machine is slower than expected.
# RUNS picks a subset, e.g. RUNS="512 compiled,256 eager" on a short lease.
IFS=, read -r -a RUN_LIST <<< "${RUNS:-512 compiled,512 eager,256 eager,256 compiled}"
for run in "${RUN_LIST[@]}"; do
  set -- $run
  flags=()
  if [ "$2" = compiled ]; then flags=(--compile); fi
  echo "== DiT-XL/2 ${1}x${1} $2 ($((SECONDS - START)) s elapsed)" >&2
  "${FLEXCLI[@]}" profile "${COMMON[@]}" --image-size "$1" ${flags[@]+"${flags[@]}"} -o "$OUT/xl2_${1}_${2}.csv"
done

# Schedule-level rows: whole 250-step DDPM sampling runs with guidance (cfg scale 4) of 8 samples, DiT-XL/2 at
# 256x256 with random weights flexified in memory (LoRA, weak p4), bf16, eager, both packing options.
# Estimate: an XL/2 forward at batch 16 (8 samples x CFG) takes ~30-40 ms in bf16 on an H100 (conservative), so a
# run is ~10 s for 250/250, ~6.5 s for 130/130, ~4.5 s for 70/70: ~21 s per round. x/x schedules have no
# mixed-size steps, so their packed rows reuse the separate measurement (noted in the CSV). Warm-up (short
# samples) + 2 timed rounds + building the model: about 1-1.5 min. If the forward runs above took long, only
# one round is timed. SCHEDULES=250/250,130/130,70/70,130/70 adds a schedule with mixed steps, where the two
# packings differ (~10 s more per round).
SCHED_REPEATS=${SCHED_REPEATS:-2}
if [ $((SECONDS - START)) -gt 330 ]; then SCHED_REPEATS=1; fi
echo "== DiT-XL/2 256x256 schedules, batch 8, $SCHED_REPEATS round(s) ($((SECONDS - START)) s elapsed)" >&2
"${FLEXCLI[@]}" profile --model DiT-XL/2 --image-size 256 --schedules "${SCHEDULES:-250/250,130/130,70/70}" \
  --steps 250 --solver ddpm --cfg-scale 4 --batch 8 --dtype bf16 --device cuda --repeats "$SCHED_REPEATS" \
  --warmup 2 --force -o "$OUT/schedules.csv"

echo "== merge and plot ($((SECONDS - START)) s elapsed)" >&2
"$PY" "$ROOT/benchmarks/profile_summary.py" "$OUT" "$OUT"/xl2_*.csv "$OUT/schedules.csv"
echo "== done in $((SECONDS - START)) s" >&2
