"""What a sentence-transformers folder says about the embedding it computes, read without loading it.

A densekd :class:`~densekd.encoders.dense.DenseEncoder` computes ``normalize(project(pool(tower(x))))``;
a sentence-transformers folder states the same in ``modules.json``: a Transformer, then Pooling,
optionally Dense (a linear projection) and Normalize. Both on-disk layouts are read:

* sentence-transformers < 6: ``1_Pooling/config.json`` holds one flag per mode
  (``pooling_mode_cls_token: true``), ``sentence_bert_config.json`` holds ``max_seq_length``;
* sentence-transformers >= 6: ``pooling_mode: "cls"``, and the length lives in the tokenizer files
  (``tokenizer_config.json``: ``model_max_length``).

Contract: a folder whose embedding densekd cannot reproduce (another pooling mode, a Dense layer with an
activation, a module densekd does not have) raises :class:`~densekd.data.io.DataFormatError` naming the
file; it is never read as something close to it (a CLS model read as mean-pooled would search silently
worse).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from densekd.data.io import DataFormatError
from densekd.encoders.pooling import POOLING_MODES

#: sentence-transformers < 6 pooling flags of the modes densekd computes (>= 6 names them as densekd does)
OLD_POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                     "pooling_mode_mean_tokens": "mean"}
#: a tokenizer without a length limit reports this (transformers' VERY_LARGE_INTEGER): not a limit
NO_LIMIT = 10**12


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _pooling(config_file: Path) -> str:
    """The pooling mode of a Pooling module's ``config.json`` (either layout)."""
    cfg = _json(config_file)
    if "pooling_mode" in cfg:  # >= 6
        mode = str(cfg["pooling_mode"])
        if mode not in POOLING_MODES:
            raise DataFormatError(config_file, f"pooling_mode {mode!r} is not one densekd computes "
                                               f"({sorted(POOLING_MODES)})")
        return mode
    on = [key for key, value in cfg.items() if key.startswith("pooling_mode_") and value]
    modes = {OLD_POOLING_FLAGS.get(key) for key in on}
    if len(on) != 1 or None in modes:
        raise DataFormatError(config_file, f"pooling {on or 'none'} is not one densekd computes: one of "
                                           f"{sorted(OLD_POOLING_FLAGS)} must be true")
    return modes.pop()


def _dense(folder: Path) -> tuple[int, Path]:
    """A Dense module's output size and weights file; only a linear map (identity activation) is densekd's."""
    cfg = _json(folder / "config.json")
    activation = str(cfg.get("activation_function", ""))
    if not activation.endswith("Identity"):
        raise DataFormatError(folder / "config.json", f"Dense activation {activation!r}: densekd's projection is "
                                                      "linear (torch.nn.Identity) only")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise DataFormatError(folder, "Dense module without model.safetensors (densekd never unpickles weights)")
    return int(cfg["out_features"]), weights


def read_st_folder(path: Path) -> tuple[dict[str, Any], Path | None]:
    """:class:`~densekd.encoders.dense.DenseEncoderConfig` fields a sentence-transformers folder implies
    (``{}`` for a plain HF checkpoint), and the weights of its Dense projection if it has one."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return {}, None
    out: dict[str, Any] = {"normalize": False}
    projection = None
    for m in json.loads(modules_file.read_text(encoding="utf-8")):
        kind = m["type"].rsplit(".", 1)[-1]
        if kind == "Transformer":
            continue
        if kind == "Pooling":
            out["pooling"] = _pooling(path / m["path"] / "config.json")
        elif kind == "Dense" and projection is None and not out["normalize"]:
            out["projection_dim"], projection = _dense(path / m["path"])
        elif kind == "Normalize":
            out["normalize"] = True
        else:
            raise DataFormatError(modules_file, f"module {m['type']!r} (at this place in the list) is not one "
                                                "densekd computes: Transformer, Pooling, [Dense], [Normalize]")
    max_len = _json(path / "sentence_bert_config.json").get("max_seq_length")  # < 6
    if not max_len:
        max_len = _json(path / "tokenizer_config.json").get("model_max_length")  # >= 6
        max_len = max_len if isinstance(max_len, int) and max_len < NO_LIMIT else None
    if max_len:
        out["passage_max_length"] = int(max_len)
    return out, projection
