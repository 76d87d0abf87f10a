#!/usr/bin/env bash
# The CUDA measurements of issue #29 in one run (< 8 min on an H100/H200), writing one JSON file of ratios.
#   here:        bash bench/device_prep.sh          (once; config + tokenizer + wheels into .device/)
#   device tool: run(command="bash bench/device.sh", carry=[".device"], timeout_s=540)
# Steps: CUDA equality tests of every heuristic (tests/test_heuristics_cuda.py), then bench/device.py:
# heuristics vs one softmax and vs transformers, top-p vs torch.sort, the sampling loop vs model.generate, the
# sampler networks' overhead per decode step, soft decoding modes vs hard mode. Results: $OUT/device.json, logs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_out}; mkdir -p "$OUT"
PY=${PY:-python}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .device/wheels ]; then  # only what is missing; never upgrades torch or transformers
  for m in jaxtyping fastcore hypothesis yaml safetensors tqdm; do
    "$PY" -c "import $m" 2>/dev/null || NEED=1
  done
  [ -n "${NEED:-}" ] && "$PY" -m pip install -q --no-index --no-deps --find-links .device/wheels .device/wheels/*.whl 2>&1 | tail -2
fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv 2>/dev/null | tee -a "$OUT/env.txt"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_heuristics_cuda.py 2>&1 | tail -15 | tee "$OUT/tests.txt"
timeout 330 "$PY" bench/device.py --out "$OUT/device.json" 2>&1 | tee "$OUT/device.log"
echo "device.sh done: $OUT/device.json"
