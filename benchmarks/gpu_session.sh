#!/usr/bin/env bash
# One short GPU lease (the workplace's `device` tool: an H100/H200 with its own CUDA torch, no network), in one
# command: issue #7's fuller Fashion-MNIST run (benchmarks/fmnist_claims.py), then a cut-down issue #5 profile
# (benchmarks/gpu_profile.sh: DiT-XL/2 at 512x512 compiled and eager, one round of whole-schedule runs).
# Needs, next to the tree: .whl/ (torch-fidelity and peft wheels; the image's own typer is used, as the carried
# typer 0.29 wanted pydantic there) and .fmnist/ (the four Fashion-MNIST idx .gz files), both ignored by git and
# carried. Writes at most 8 files into OUTDIR. On 2026-11-26 (H200) the claims part ran and is committed under
# benchmarks/results/fmnist_claims/; the profile part has not yet run (that lease ran out).
#
#   bash benchmarks/gpu_session.sh OUTDIR [CLAIMS_BUDGET_S]
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu_session.sh OUTDIR [CLAIMS_BUDGET_S]}
BUDGET=${2:-300}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 FLEXCLI_FASHION_MNIST="$PWD/.fmnist" PY=python3
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/torch_fidelity*.whl .whl/peft*.whl
export PYTHONPATH="$PWD:/tmp/site"
SMOKE='from flexcli.api import flexify_checkpoint; from flexcli.builtin.demo import BASE; import torch_fidelity
flexify_checkpoint(BASE, [8], "/tmp/smoke.safetensors", force=True); print("smoke ok")'
if ! python3 -c "$SMOKE"; then  # the carried peft does not fit this image: use the image's own
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-tf .whl/torch_fidelity*.whl
  export PYTHONPATH="$PWD:/tmp/site-tf"
  python3 -c "$SMOKE" || exit 1
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'peft', peft.__version__)"
  nproc; } > "$OUT/environment.txt" 2>&1

python3 benchmarks/fmnist_claims.py --out /tmp/claims --budget-s "$BUDGET" 2>&1 | tee "$OUT/claims.log"
cp /tmp/claims/fmnist_claims.csv /tmp/claims/run.json /tmp/claims/distilled.safetensors "$OUT"/ 2>/dev/null

RUNS="512 compiled,512 eager" SCHED_REPEATS=1 bash benchmarks/gpu_profile.sh /tmp/gpu 2>&1 | tee "$OUT/gpu_profile.log"
cp /tmp/gpu/profile.csv "$OUT"/ 2>/dev/null
ls -la "$OUT"
