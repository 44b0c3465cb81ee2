#!/usr/bin/env bash
# A second Python environment for bench/encode_speed.py's sentence-transformers ONNX rows.
# sentence-transformers' backend="onnx" needs optimum-onnx, which pins transformers<4.58 (densekd runs
# on transformers 5), so it cannot share densekd's environment. Usage:
#   bash bench/setup_st_onnx_env.sh [VENV_DIR]      # default: .venv-st-onnx in the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-st-onnx}"
PY="${PY:-python3}"
"$PY" -m venv "$VENV"
# torch pinned first: 2.13.0 is the local CPU wheel; an unpinned torch pulls a CUDA build
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q "transformers>=4.41,<4.58" "sentence-transformers>=5.1,<5.2" "optimum-onnx[onnxruntime]==0.1.0"
echo "ready: python bench/encode_speed.py --st-python $VENV/bin/python"
