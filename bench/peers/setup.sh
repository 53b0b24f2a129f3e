#!/usr/bin/env bash
# Set up the peers of bench/bench_jobs.py outside the repo: a venv with the same torch / diffusers / transformers /
# peft / accelerate versions as tinypipe's, plus what the diffusers examples import (torchvision, datasets), and the
# diffusers example scripts, copied out of a clone of huggingface/diffusers (they are the reference, not our code).
#
# Usage: bash bench/peers/setup.sh DIFFUSERS_GIT [REV=HEAD] [VENV=/tmp/benchvenv] [EXAMPLES=/tmp/diffusers_examples]
#   DIFFUSERS_GIT: a clone of https://github.com/huggingface/diffusers (bare or not), e.g. made with
#   `git clone --bare https://github.com/huggingface/diffusers /tmp/diffusers.git`. REV should be a commit whose
#   examples accept the installed diffusers (their check_min_version line).
# Then: python bench/bench_jobs.py --peer-python VENV/bin/python --examples EXAMPLES  (those are the defaults).
set -euo pipefail
GIT_DIR_ARG="${1:?usage: setup.sh DIFFUSERS_GIT [REV] [VENV] [EXAMPLES]}"
REV="${2:-HEAD}"
VENV="${3:-/tmp/benchvenv}"
EXAMPLES="${4:-/tmp/diffusers_examples}"
HERE="$(cd "$(dirname "$0")/../.." && pwd)"
PROJECT_PYTHON="${PROJECT_PYTHON:-$HERE/.venv/bin/python}"

# The same library versions as the project's venv, so that both sides run the same kernels.
PINS="$("$PROJECT_PYTHON" -c 'import importlib.metadata as m; print(" ".join(f"{p}=={m.version(p)}" for p in ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors")))')"
PINS="${PINS//+cpu/}"
python3 -m venv "$VENV"
# shellcheck disable=SC2086
"$VENV/bin/pip" install --quiet $PINS torchvision datasets pillow

# Where torchvision's only reachable wheel is CUDA-linked, its compiled ops cannot load against a CPU torch and
# torchvision/__init__.py fails registering them; the examples use only its pure-Python transforms, so skip the
# registrations when the ops are absent.
TV="$("$VENV/bin/python" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("torchvision").origin))')"
"$VENV/bin/python" - "$TV/__init__.py" <<'PY'
import sys

path = sys.argv[1]
text = open(path).read()
old = """from torchvision import (
    _autograd_registrations,
    _meta_registrations,
    datasets,"""
new = """# BENCH PATCH: skip the op registrations when the compiled ops (_C) cannot load.
if extension._has_ops():
    from torchvision import _autograd_registrations, _meta_registrations  # noqa: F401
from torchvision import (
    datasets,"""
if "BENCH PATCH" not in text and old in text:
    open(path, "w").write(text.replace(old, new))
PY
"$VENV/bin/python" -c "import torch, torchvision, diffusers, transformers, peft, accelerate, datasets; from torchvision import transforms; print('peer venv ok:', torch.__version__, diffusers.__version__, transformers.__version__, peft.__version__)"

mkdir -p "$EXAMPLES"
if git --git-dir="$GIT_DIR_ARG" rev-parse --git-dir >/dev/null 2>&1; then GIT=(git --git-dir="$GIT_DIR_ARG"); else GIT=(git -C "$GIT_DIR_ARG"); fi
for file in examples/text_to_image/train_text_to_image_lora.py examples/dreambooth/train_dreambooth_lora.py \
            examples/textual_inversion/textual_inversion.py examples/dreambooth/train_dreambooth_lora_sdxl.py \
            examples/dreambooth/train_dreambooth_lora_flux.py; do
  "${GIT[@]}" show "$REV:$file" > "$EXAMPLES/$(basename "$file")"
done
"${GIT[@]}" rev-parse "$REV" > "$EXAMPLES/COMMIT"
echo "peer scripts of diffusers $(cat "$EXAMPLES/COMMIT") in $EXAMPLES:"
grep -H 'check_min_version("' "$EXAMPLES"/*.py
