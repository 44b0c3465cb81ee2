"""sentence-transformers' own ONNX backends, run in a separate Python environment (helper of encode_speed.py).

sentence-transformers' ``backend="onnx"`` needs ``optimum-onnx``, which pins ``transformers<4.58``,
older than the transformers densekd runs on. ``bench/encode_speed.py`` therefore measures these rows
in a second virtual environment (``--st-python``, made by ``bench/setup_st_onnx_env.sh``) through
this worker, over stdin/stdout, one JSON object per line:

* ``{"cmd": "load", "name": n, "backend": "torch"|"onnx"|"onnx-int8", "max_length": L}`` -> ``{"ok": true}``
* ``{"cmd": "encode", "name": n, "texts": path.json, "batch_size": b, "out": path.npy | null}``
  -> ``{"seconds": s}`` (the wall time of ``SentenceTransformer.encode``; embeddings saved to ``out``)
* ``{"cmd": "versions"}`` -> the package versions of this environment.

Exports are made once with sentence-transformers' own functions (``backend="onnx"`` exports through
optimum; ``export_dynamic_quantized_onnx_model`` with the CPU's best int8 config) and cached under
``--cache`` (keyed by model folder and config), so repetitions time encoding only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def int8_config() -> str:
    """sentence-transformers' quantisation config for this CPU (its names: avx512_vnni, avx512, avx2, arm64)."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for name in ("avx512_vnni", "avx512", "avx2"):
        if (name if name != "avx512" else "avx512f") in flags:
            return name
    return "arm64"


def load(model_path: str, backend: str, max_length: int, cache: Path):
    from sentence_transformers import (
        SentenceTransformer,
        export_dynamic_quantized_onnx_model,
    )

    if backend == "torch":
        model = SentenceTransformer(model_path, device="cpu")
    else:
        folder = cache / hashlib.sha1(str(Path(model_path).resolve()).encode()).hexdigest()[:12]
        if not (folder / "onnx" / "model.onnx").exists():
            SentenceTransformer(model_path, backend="onnx", device="cpu").save_pretrained(str(folder))
        if backend == "onnx":
            model = SentenceTransformer(str(folder), backend="onnx", device="cpu")
        else:
            cfg = int8_config()
            name = f"onnx/model_qint8_{cfg}.onnx"
            if not (folder / name).exists():
                export_dynamic_quantized_onnx_model(SentenceTransformer(str(folder), backend="onnx"), cfg, str(folder))
            model = SentenceTransformer(str(folder), backend="onnx", device="cpu", model_kwargs={"file_name": name})
    model.max_seq_length = max_length
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="sentence-transformers model folder")
    ap.add_argument("--cache", required=True, help="folder for the ONNX exports")
    args = ap.parse_args()
    import numpy as np

    models = {}
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "load":
            models[req["name"]] = load(args.model, req["backend"], req["max_length"], Path(args.cache))
            reply = {"ok": True}
        elif req["cmd"] == "encode":
            texts = json.loads(Path(req["texts"]).read_text())
            t0 = time.perf_counter()
            emb = models[req["name"]].encode(texts, batch_size=req["batch_size"], show_progress_bar=False,
                                             convert_to_numpy=True)
            reply = {"seconds": time.perf_counter() - t0}
            if req.get("out"):
                np.save(req["out"], emb.astype(np.float32))
        elif req["cmd"] == "versions":
            reply = {p: version(p) for p in ("sentence-transformers", "transformers", "optimum", "optimum-onnx",
                                             "onnxruntime", "torch")}
            reply["int8_config"] = int8_config()
        else:
            reply = {"error": f"unknown command {req['cmd']!r}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
