#!/usr/bin/env bash
# Packs what benchmarks/video_claims.py needs on a lent GPU, which has neither MiniLM nor Debian's Fashion-MNIST:
# both weak modes distilled and the held-out prompts encoded (`video_claims.py --prepare`, into WORK), and the
# dataset's test split (the real reference clips). Writes .devbundle/video-bench.tar.xz (git-ignored; xz, since
# the 1,000 prompts repeat 250 captions); benchmarks/gpu_session.sh runs the claims from it when it is carried:
#
#   bash benchmarks/video_bundle.sh [WORK] [NUM_SAMPLES]   # WORK: runs/video-bench, NUM_SAMPLES: 1000
#   then `run` with carry [".whl", ".devbundle"] and "bash benchmarks/gpu_session.sh $OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/video-bench}
N=${2:-1000}
DATA=${FLEXCLI_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
PY=${PY:-.venv/bin/python}
"$PY" benchmarks/video_claims.py --work "$WORK" --num-samples "$N" --prepare >/dev/null
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/video-bench/fashion-mnist" .devbundle
for mode in temporal spatial; do
  mkdir -p "$STAGE/video-bench/distill-$mode"
  cp "$WORK/distill-$mode/distilled.safetensors" "$STAGE/video-bench/distill-$mode/"
done
cp "$WORK/prompts-$N.safetensors" "$STAGE/video-bench/"
cp "$DATA"/t10k-*-idx*-ubyte.gz "$STAGE/video-bench/fashion-mnist/"
echo "$N" > "$STAGE/video-bench/num_samples"
tar -C "$STAGE" -cf - video-bench | xz -9 -T2 > .devbundle/video-bench.tar.xz.part
mv .devbundle/video-bench.tar.xz.part .devbundle/video-bench.tar.xz
ls -la .devbundle/video-bench.tar.xz
