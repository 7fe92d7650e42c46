#!/usr/bin/env bash
# One short GPU lease (the workplace's `device` tool: one H100/H200 that brings its own CUDA torch, no network), in
# one command. Each stage is `flexcli profile` with random weights, bf16, batch 2 (one CFG step) unless said, in
# priority order, each under its own time limit (590 s together, but all end by PROFILE_END, 540 s) so that
# a slow stage cannot starve the rest. Measured on an H200 on 2026-12-04 (benchmarks/results/gpu_h200/): set-up
# 26 s, stages 1-3 71, 98 and 39 s, stage 4 46 s (unmerged only, in a second call after a fix), stage 5 the rest.
#   1. DiT-XL/2 at 512x512 (latent 64), patch 2 and 4, compiled: latency vs FLOPs (issue #5's acceptance row),
#      at batch 2 and again at batch 16 (at batch 2 the weak pass left the H200 mostly idle);
#   2. the T2I shape: PixArt-XL/2-512 (latent 64, full-length 120-token captions), patch 2 and 4, compiled;
#   3. the T2V shape: Wan2.1-T2V-1.3B at the paper's T2V latent 32x88x48 (33,792 tokens at (1, 2, 2)), patches
#      1x2x2, 2x2x2 (temporal weak) and 1x4x4 (spatial weak), eager, 5 timed passes (0.6 PFLOP each at
#      (1, 2, 2): an estimated 1 s at 70 % of an H200's bf16 peak);
#   4. the schedule runs: whole 250-step DDPM sampling runs of DiT-XL/2 at 256x256, batch 8, CFG 4, flexified in
#      memory (LoRA, weak p4), 250/250, 130/130 and 70/70, one timed round, LoRA unmerged and merged;
# then merges the CSVs into OUTDIR/profile.csv with the plots (benchmarks/profile_summary.py, which also prints the
# weak/powerful latency ratio beside the FLOPs ratio of each shape);
#   5. where .devbundle/video-bench.tar.xz was carried (benchmarks/video_bundle.sh): issue #15's video claims
#      (benchmarks/video_claims.py, 1,000 clips per cell, 3 seeds, seed-major) in 4 processes on the GPU, until
#      VIDEO_END (565 s) after the start; rows finish one by one, so a run cut short still reports what it has,
#      and the committed rows (benchmarks/results/video/claims/cells*.csv) are skipped, so each lease adds more.
# OUTDIR gets at most 8 files: environment.txt, session.log, profile.csv, roofline.png, latency_vs_flops.png (or, if
# the merge fails, the stage CSVs), video_cells.csv and video_claims.md.
# The Fashion-MNIST claims run that this script used to start (issue #7) ran on an H200 on 2026-11-26 and is
# committed under benchmarks/results/fmnist_claims/; `python3 benchmarks/fmnist_claims.py` still runs it.
#
#   bash benchmarks/gpu_session.sh OUTDIR          # on the device: `run` with "bash benchmarks/gpu_session.sh $OUT"
#   DRY_RUN=1 bash benchmarks/gpu_session.sh DIR   # here, on the CPU: every stage with --analytic (FLOPs only, checks
#                                                  # that each shape is valid), no schedule stage, no timing
# The image lacks diffusers (PixArt's and Wan's blocks, the flow solvers) and torch-fidelity (stage 5's FID): their
# wheels (and importlib_metadata, diffusers' one missing need) go in .whl/ (ignored by git, carried) and are installed
# into /tmp/site; only packages the image lacks belong there, since that folder comes first on the path:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl diffusers==0.42.1 importlib_metadata \
#     torch-fidelity==0.4.0
#   `run` with carry [".whl", ".devbundle"] and "bash benchmarks/gpu_session.sh $OUT", timeout_s 600
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu_session.sh OUTDIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
START=$SECONDS
export PYTHONUNBUFFERED=1
# The project's venv where there is one (here); on the device, the image's python3 with this tree on PYTHONPATH.
if [ -x .venv/bin/python ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${DRY_RUN:-}" ] && ! "$PY" -c "import peft, diffusers, torch_fidelity" 2>/dev/null &&
   ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

log() { echo "== $* ($((SECONDS - START)) s elapsed)" | tee -a "$OUT/session.log" >&2; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  git rev-parse HEAD 2>/dev/null || true; nproc; } > "$OUT/environment.txt" 2>&1

if [ -n "${DRY_RUN:-}" ]; then
  TIMING=(--analytic)
  COMPILED=(--analytic)
else
  TIMING=(--device cuda --dtype bf16 --warmup 3)
  COMPILED=(--device cuda --dtype bf16 --warmup 5 --compile)
fi
stage() {  # stage NAME LIMIT_S ARGS...: one `flexcli profile` run into $WORK/NAME.csv, killed after LIMIT_S or at
  local name=$1 limit=$2 left; shift 2  # PROFILE_END (540 s after the start), so that the merge always runs
  left=$((${PROFILE_END:-540} - (SECONDS - START)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then log "$name: skipped (past PROFILE_END)"; return; fi
  log "$name"
  timeout "$limit" "$PY" -m flexcli profile "$@" --force -o "$WORK/$name.csv" 2>&1 | tee -a "$OUT/session.log" >&2
  [ -f "$WORK/$name.csv" ] || log "$name: no CSV (failed or over its $limit s)"
}

stage dit_xl2_512_compiled 140 --model DiT-XL/2 --image-size 512 --patch-sizes 2,4 --batch 2 --repeats 50 \
  "${COMPILED[@]}"
stage dit_xl2_512_compiled_b16 100 --model DiT-XL/2 --image-size 512 --patch-sizes 2,4 --batch 16 --repeats 30 \
  "${COMPILED[@]}"
stage t2i_pixart_512_compiled 140 --model PixArt-XL/2-512 --patch-sizes 2,4 --batch 2 --repeats 50 "${COMPILED[@]}"
stage t2v_wan_1p3b_eager 90 --model Wan2.1-T2V-1.3B --latent 32x88x48 --patch-sizes 1x2x2,2x2x2,1x4x4 --batch 2 \
  --repeats 5 "${TIMING[@]}"
if [ -z "${DRY_RUN:-}" ]; then
  stage dit_xl2_256_schedules 120 --model DiT-XL/2 --image-size 256 --schedules 250/250,130/130,70/70 --steps 250 \
    --solver ddpm --cfg-scale 4 --batch 8 --repeats 1 --merge-lora "${TIMING[@]}"
fi

log "merge"
CSVS=("$WORK"/*.csv)
if [ -n "${DRY_RUN:-}" ]; then  # FLOPs only: nothing to plot
  cp "${CSVS[@]}" "$OUT"/
elif ! "$PY" benchmarks/profile_summary.py "$OUT" "${CSVS[@]}" 2>&1 | tee -a "$OUT/session.log"; then
  cp "${CSVS[@]}" "$OUT"/ 2>/dev/null
fi
# 5. the video claims (#15) in what is left before VIDEO_END s, from the bundle of benchmarks/video_bundle.sh
BUNDLE=.devbundle/video-bench.tar.xz
if [ -z "${DRY_RUN:-}" ] && [ -f "$BUNDLE" ]; then
  log "video_claims"
  tar -C "$WORK" -xJf "$BUNDLE"
  VB=$WORK/video-bench
  mkdir -p "$WORK/video"  # the committed rows: a later lease adds the cells and seeds still missing
  for f in benchmarks/results/video/claims/cells*.csv; do cp "$f" "$WORK/video/cells.committed-${f##*/}"; done
  export FLEXCLI_FASHION_MNIST=$VB/fashion-mnist
  CLAIMS=(benchmarks/video_claims.py --work "$VB" --out "$WORK/video" --num-samples "$(cat "$VB/num_samples")"
          --batch-size 250 --threads 4)
  timeout 60 "$PY" "${CLAIMS[@]}" --prepare >>"$OUT/session.log" 2>&1  # the PI-only checkpoints, once
  left=$((${VIDEO_END:-565} - (SECONDS - START)))
  if [ "$left" -ge 30 ]; then  # (`timeout 0` would mean no limit at all)
    for i in 0 1 2 3; do
      timeout "$left" "$PY" "${CLAIMS[@]}" --shard "$i/4" >"$WORK/video$i.log" 2>&1 &
    done
    wait
  else
    log "video_claims: skipped (past VIDEO_END)"
  fi
  cat "$WORK"/video?.log 2>/dev/null | grep -v "^ *$" | tail -n 200 >>"$OUT/session.log"
  "$PY" benchmarks/video_claims.py --out "$WORK/video" --report >/dev/null 2>>"$OUT/session.log" &&
    cp "$WORK/video/claims.md" "$OUT/video_claims.md"
  "$PY" -c "import pandas as pd, glob, sys; pd.concat(map(pd.read_csv, sorted(glob.glob(sys.argv[1])))).to_csv(
    sys.argv[2], index=False)" "$WORK/video/cells*.csv" "$OUT/video_cells.csv" 2>>"$OUT/session.log"
fi
log "done"
ls -la "$OUT" >&2
