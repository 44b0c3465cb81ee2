"""``densekd qad``: quantisation-aware distillation of a dense encoder for the ``onnx-int8`` backend.

Output folder (data contract)
-----------------------------
A densekd encoder checkpoint (``DenseEncoder.save_pretrained``: fp32 safetensors weights, config,
tokenizer) plus ``qad.json`` (the settings, the training texts' counts and the simulated-int8 cosine
to the fp32 model before and after, on held-out passages). Serve it with ``--backend onnx-int8``
(``densekd index`` / ``search``). The folder is written under a temporary name and published in one
step: a failed run leaves an existing ``--out`` untouched.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import asdict, dataclass, field

from densekd.cli.config import add_config_arguments, config_from_args, settings_help
from densekd.data.io import DataFormatError

MANIFEST = "qad.json"


@dataclass
class QadCommandConfig:
    """Settings of ``densekd qad`` (YAML keys = field names)."""

    corpus: str = field(metadata={"help": "BEIR corpus.jsonl whose passages train the model (no labels needed)",
                                  "metavar": "FILE"})
    out: str = field(metadata={"help": "output model folder (an existing densekd model there is replaced "
                                       "when the new one is complete)", "metavar": "DIR"})
    model: str | None = field(default=None, metadata={
        "help": "encoder checkpoint to quantise (HF, sentence-transformers or densekd folder); "
                "default: bundled all-MiniLM-L6-v2", "metavar": "PATH"})
    queries: str | None = field(default=None, metadata={
        "help": "optional BEIR queries.jsonl: its texts train the query side too (no labels are read)",
        "metavar": "FILE"})
    passages: int = field(default=3200, metadata={"help": "corpus passages sampled for training (seeded)"})
    held_out: int = field(default=200, metadata={"help": "other passages on which the int8 cosine is reported"})
    max_length: int | None = field(default=None, metadata={
        "help": "passage length limit in tokens, as you will index (default: the model's own; 256 for a plain "
                "checkpoint)"})
    max_steps: int = field(default=200, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=16, metadata={"help": "texts per step"})
    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate"})
    score_weight: float = field(default=1.0, metadata={"help": "weight of the in-batch score KL (0 = cosine only)"})
    temperature: float = field(default=0.05, metadata={"help": "in-batch score softmax temperature"})
    seed: int = field(default=0, metadata={"help": "seed of the passage sample and of training"})

    def __post_init__(self) -> None:
        from densekd.pipeline.validate import check_numbers

        check_numbers(self)  # every number finite and in range, naming the key
        if self.max_steps < 1:  # the shared rule also allows -1 ("no limit"), which means nothing here
            raise ValueError(f"key 'max_steps' must be >= 1, got {self.max_steps}")


DESCRIPTION = """\
Quantisation-aware distillation: fine-tune an encoder so that its dynamic-int8 version (backend
onnx-int8) keeps the fp32 model's embeddings. A copy of the model runs with int8 rounding simulated
and learns to reproduce the frozen fp32 model's own vectors (cosine + in-batch score KL) on corpus
passages: no labels, no teacher other than the model itself. Prints and saves the int8 cosine to the
fp32 model on held-out passages before and after.
"""

EPILOG = """\
examples:
  densekd qad --corpus data/scifact/corpus.jsonl --out models/minilm-qad
  densekd qad --corpus c.jsonl --queries q.jsonl --model runs/student/final --out runs/student-qad --max-steps 400
  densekd index --corpus data/scifact/corpus.jsonl --out idx/qad --kind dense --model models/minilm-qad \\
                --backend onnx-int8

settings available only in the config file or with --set:
""" + settings_help(QadCommandConfig)


def make_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``densekd qad``."""
    parser = subparsers.add_parser("qad", help="quantisation-aware distillation for the onnx-int8 backend",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, QadCommandConfig)
    return parser


def main(args: argparse.Namespace) -> int:
    """Run ``densekd qad``: validate, sample texts, train, publish the model folder in one step."""
    cfg = config_from_args(args, QadCommandConfig)
    from densekd.cli.outputs import check_model_folder, check_output

    out = check_output("--out", cfg.out, {"--corpus": cfg.corpus, "--model": cfg.model, "--queries": cfg.queries},
                       kind="dir")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise DataFormatError(out, f"--out is a folder that holds files but no densekd qad model (no {MANIFEST}): "
                                   "refusing to replace it (choose a new or empty folder)")
    check_model_folder("--model", cfg.model)
    import numpy as np

    from densekd.data.beir import load_corpus, load_queries
    from densekd.data.io import write_json
    from densekd.encoders.dense import DenseEncoder, resolve_model_path
    from densekd.index._storage import atomic_dir
    from densekd.training.qad import QadConfig, int8_cosine, quantization_aware_distill

    corpus = load_corpus(cfg.corpus)
    texts = [p.full_text() for p in corpus.values()]
    if not texts:
        raise DataFormatError(cfg.corpus, "the corpus is empty: nothing to train on")
    queries = [q.text for q in load_queries(cfg.queries).values()] if cfg.queries else []
    order = np.random.default_rng(cfg.seed).permutation(len(texts))
    train = [texts[i] for i in order[:cfg.passages]]
    held = [texts[i] for i in order[cfg.passages:cfg.passages + cfg.held_out]]
    encoder = DenseEncoder.from_pretrained(cfg.model, **({} if cfg.max_length is None
                                                         else {"passage_max_length": cfg.max_length}))
    before = int8_cosine(encoder, encoder, held) if held else None
    with atomic_dir(out) as tmp:
        targs = QadConfig(output_dir=str(tmp / ".trainer"), max_steps=cfg.max_steps,
                          per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                          score_weight=cfg.score_weight, temperature=cfg.temperature, seed=cfg.seed,
                          disable_tqdm=True)
        student = quantization_aware_distill(encoder, train, targs, queries=queries)
        after = int8_cosine(student, encoder, held) if held else None
        shutil.rmtree(tmp / ".trainer", ignore_errors=True)
        student.save_pretrained(tmp)
        stats = {k: None if v is None else {"mean": float(v.mean()), "min": float(v.min())}
                 for k, v in (("before", before), ("after", after))}
        write_json(tmp / MANIFEST, {"settings": asdict(cfg), "source_model": resolve_model_path(cfg.model),
                                    "train_passages": len(train), "train_queries": len(queries),
                                    "held_out_passages": len(held), "simulated_int8_cosine_to_fp32": stats})
    msg = (f"simulated int8 cosine to fp32 on {len(held)} held-out passages: {stats['before']['mean']:.4f} -> "
           f"{stats['after']['mean']:.4f} (min {stats['before']['min']:.4f} -> {stats['after']['min']:.4f})"
           if held else "no held-out passages")
    print(f"densekd qad: {out} ({msg}); serve with --backend onnx-int8", file=sys.stderr)
    return 0
