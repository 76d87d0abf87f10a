#!/usr/bin/env bash
# Prepare what bench/device.sh needs on a CUDA machine that has torch and transformers but no internet and no
# model files: run HERE (where the registries and the embedded model's cache are), then pass `.device` in `carry`.
#   bash bench/device_prep.sh            # writes .device/ (ignored by git, ~6 MB)
# .device/model: the embedded model's config and tokenizer only (no weights: the GPU run builds random weights of
# the same shape, which time exactly like the trained ones); .device/wheels: pure-Python packages the library and
# the tests import that the GPU image may lack.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/work/main/.venv/bin/python}
SRC=${SRC:-$HOME/.cache/soft_sampler/SmolLM2-135M-Instruct}
mkdir -p .device/model .device/wheels
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> "$(git rev-parse --git-path info/exclude)"
cp "$SRC"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} .device/model/
rm -f .device/wheels/*.whl
PKGS=$("$PY" -m pip freeze 2>/dev/null | grep -i '^\(jaxtyping\|wadler.lindig\|fastcore\|hypothesis\|sortedcontainers\|attrs\|pyyaml\|safetensors\|tqdm\)==')
"$PY" -m pip download -q --only-binary=:all: --no-deps -d .device/wheels $PKGS wadler-lindig  # the versions used here
du -sh .device
