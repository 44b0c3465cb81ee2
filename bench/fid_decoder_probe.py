"""Probe of the generative FiD reader: does the CPU-sized BERT2BERT decoder's cross-attention point at answer passages?

Usage::

    python bench/fid_decoder_probe.py                       # 1,000 squad-open training questions, k=5, 4 epochs
    python bench/fid_decoder_probe.py --questions 16 --epochs 1 --smoke

The reader -> retriever loop (``bench/fidkd_squad.py``) only works when the reader's passage scores are
better labels than the retriever's own ranking. This probe measures exactly that, on the training
questions the loop would score, while the reader trains:

* the reader is the loop's default (``configs/squad-fidkd.yaml``): all-MiniLM-L6-v2 warm-started as a
  BERT2BERT :class:`~densekd.encoders.reader.FiDReader`, 2 decoder layers, **frozen encoder**;
* because the encoder is frozen, its outputs for each question's BM25 top ``k`` are computed once and
  cached (fp16); training then runs the decoder alone (the same token-mean cross-entropy as
  :class:`~densekd.training.reader_trainer.ReaderTrainer`), which makes many epochs affordable on CPU;
* after every epoch, on the same questions: how often the passage with the highest ``fid-kd`` score
  (pre-softmax attention of the first decoded token, mean over heads, layers and tokens) holds an
  answer string, and the same for ``attention-all`` (all answer tokens, teacher-forced);
* baselines: a random passage of the ``k`` (the mean share of answer passages) and BM25's top 1.

Writes bench/results/fid_decoder_probe.{json,md,png} (``--smoke``: bench/results/smoke/).
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers.modeling_outputs import BaseModelOutput  # noqa: E402

from common import REPO, RESULTS, SHARED_DATA, markdown_table, provenance, write_results  # noqa: E402
from densekd.cli.config import load_config  # noqa: E402
from densekd.encoders.reader import IGNORE_INDEX, FiDReader  # noqa: E402
from densekd.eval.qa import has_answer  # noqa: E402
from densekd.index.bm25 import BM25Index  # noqa: E402
from densekd.pipeline.fidkd_config import FidKDConfig  # noqa: E402
from densekd.pipeline.qa_data import load_qa_context  # noqa: E402
from densekd.teachers.fid import CrossAttentionRecorder, aggregate_cross_attention  # noqa: E402

NAME = "fid_decoder_probe"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(SHARED_DATA / "squad-open"))
    ap.add_argument("--questions", type=int, default=1000, help="training questions (seeded sample)")
    ap.add_argument("--k", type=int, default=5, help="BM25 passages per question")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3, help="the loop's reader learning rate")
    ap.add_argument("--batch-size", type=int, default=8, help="questions per optimizer step")
    ap.add_argument("--passage-max-length", type=int, default=160)
    ap.add_argument("--decoder-layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="write to bench/results/smoke/")
    return ap.parse_args()


class CachedQuestions:
    """Frozen-encoder states ``[n, k*L, H]`` (fp16), masks ``[n, k*L]``, labels and answer flags ``[n, k]``."""

    def __init__(self, reader: FiDReader, items: list[tuple[str, list[str], list[Any]]], k: int, length: int):
        states, masks, self.labels, self.has = [], [], [], []
        with torch.inference_mode():
            for question, answers, passages in tqdm(items, desc="encode (frozen encoder)", unit="q"):
                b = reader.tokenize([question], [passages], [answers[0]], n_passages=k)
                h, m = reader.encode(b["input_ids"], b["attention_mask"], b["passage_mask"])
                width = h.shape[1] // k  # the tokenizer pads to the question's longest passage: pad to L
                hp = torch.zeros(k, length, h.shape[-1])
                hp[:, :width] = h[0].view(k, width, -1)
                mp = torch.zeros(k, length, dtype=m.dtype)
                mp[:, :width] = m[0].view(k, width)
                states.append(hp.view(k * length, -1).half())
                masks.append(mp.view(k * length))
                self.labels.append(b["labels"][0])
                self.has.append([has_answer(getattr(p, "text", str(p)), answers) for p in passages])
        self.states, self.masks = torch.stack(states), torch.stack(masks)
        self.k, self.length = k, length

    def batch(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        labels = torch.nn.utils.rnn.pad_sequence([self.labels[i] for i in idx], batch_first=True,
                                                 padding_value=IGNORE_INDEX)
        return self.states[idx].float(), self.masks[idx], labels


def top_has_answer(reader: FiDReader, data: CachedQuestions, tokens: str) -> float:
    """Share of questions whose highest-scored passage holds an answer (``tokens``: first | all)."""
    reader.eval()
    hits: list[bool] = []
    start = int(reader.model.generation_config.decoder_start_token_id)
    with torch.inference_mode():
        for i in range(0, len(data.labels), 16):
            idx = list(range(i, min(i + 16, len(data.labels))))
            h, m, labels = data.batch(idx)
            dec = (torch.full((len(idx), 1), start) if tokens == "first"
                   else reader.model.prepare_decoder_input_ids_from_labels(labels=labels))
            with CrossAttentionRecorder(reader.model) as rec:
                reader.model(encoder_outputs=BaseModelOutput(last_hidden_state=h), attention_mask=m,
                             decoder_input_ids=dec, use_cache=False)
            scores = aggregate_cross_attention(rec.scores(), m.view(len(idx), data.k, data.length), tokens=tokens,
                                               target_mask=None if tokens == "first" else labels != IGNORE_INDEX)
            hits += [data.has[j][int(s.argmax())] for j, s in zip(idx, scores)]
    reader.train()
    return float(np.mean(hits))


def train_epoch(reader: FiDReader, data: CachedQuestions, opt: torch.optim.Optimizer, sched: Any,
                batch_size: int, rng: random.Random) -> float:
    """One epoch of decoder-only teacher-forced training; returns the mean token loss."""
    order = list(range(len(data.labels)))
    rng.shuffle(order)
    params = [p for p in reader.parameters() if p.requires_grad]
    losses = []
    for i in tqdm(range(0, len(order) - batch_size + 1, batch_size), desc="decoder", unit="step", leave=False):
        h, m, labels = data.batch(order[i:i + batch_size])
        dec = reader.model.prepare_decoder_input_ids_from_labels(labels=labels)
        out = reader.model(encoder_outputs=BaseModelOutput(last_hidden_state=h), attention_mask=m,
                           decoder_input_ids=dec, use_cache=False)
        loss = F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
    return float(np.mean(losses))


def load_items(args: argparse.Namespace) -> list[tuple[str, list[str], list[Any]]]:
    """The seeded sample of training questions (the loop's split) with BM25's top ``k``."""
    cfg = load_config(REPO / "configs" / "squad-fidkd.yaml",
                      [f"data.max_train_queries={args.questions}", f"data.seed={args.seed}"], FidKDConfig,
                      flags={"data": {"root": str(Path(args.data_root).resolve())}})
    ctx = load_qa_context(cfg)
    run = BM25Index().index(ctx.corpus, show_progress=False).search(
        {q: ctx.queries[q].text for q in ctx.train_qids}, k=args.k, show_progress=False)
    return [(ctx.queries[q].text, ctx.queries[q].answers, ctx.passages(run, q)[:args.k])
            for q in ctx.train_qids if len(run.get(q) or {}) >= args.k]


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    items = load_items(args)
    reader = FiDReader.from_pretrained(None, n_passages=args.k, decoder_layers=args.decoder_layers,
                                       freeze_encoder=True, passage_max_length=args.passage_max_length)
    start = time.perf_counter()
    data = CachedQuestions(reader, items, args.k, args.passage_max_length)
    encode_s = time.perf_counter() - start
    params = [p for p in reader.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    total = max(1, args.epochs * (len(items) // args.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(  # 10 % warm-up, linear decay (the loop's schedule)
        opt, lambda s: min(1.0, (s + 1) / max(1.0, 0.1 * total)) * max(0.0, 1 - s / total))
    reader.train()
    epochs = [{"epoch": 0, "loss": None, "seconds": 0.0, "fid_kd": top_has_answer(reader, data, "first"),
               "attention_all": top_has_answer(reader, data, "all")}]
    for epoch in range(1, args.epochs + 1):
        t = time.perf_counter()
        loss = train_epoch(reader, data, opt, sched, args.batch_size, rng)
        row = {"epoch": epoch, "loss": loss, "seconds": round(time.perf_counter() - t, 1),
               "fid_kd": top_has_answer(reader, data, "first"),
               "attention_all": top_has_answer(reader, data, "all")}
        print(row, flush=True)
        epochs.append(row)
    has = np.array(data.has, dtype=float)
    result = {"questions": len(items), "k": args.k, "encode_seconds": round(encode_s, 1),
              "baselines": {"random_passage": float(has.mean()), "bm25_top1": float(has[:, 0].mean()),
                            "any_of_k": float(has.max(axis=1).mean())},
              "epochs": epochs, "settings": vars(args), "provenance": provenance()}
    out = RESULTS / "smoke" if args.smoke else RESULTS
    write_results(NAME, result, markdown(result), out)
    plot(result, out / f"{NAME}.png")
    print(f"wrote {out / NAME}.json")


def markdown(r: dict[str, Any]) -> str:
    b = r["baselines"]
    rows = [[e["epoch"], "" if e["loss"] is None else e["loss"], e["fid_kd"], e["attention_all"], e["seconds"]]
            for e in r["epochs"]]
    return (f"{r['questions']} squad-open training questions, BM25 top {r['k']} each; reader: MiniLM BERT2BERT, "
            f"{r['settings']['decoder_layers']} decoder layers, frozen encoder (states cached: "
            f"{r['encode_seconds']:.0f} s), lr {r['settings']['lr']}, {r['settings']['batch_size']} questions "
            "per step.\n\nShare of questions whose top-scored passage holds an answer string:\n\n"
            + markdown_table(["epoch", "token loss", "fid-kd (first token)", "attention-all (answer tokens)",
                              "epoch seconds"], rows)
            + f"\nBaselines on the same passages: random passage {b['random_passage']:.3f}, BM25's top 1 "
              f"{b['bm25_top1']:.3f}, any of the {r['k']} {b['any_of_k']:.3f}.\n\n![plot]({NAME}.png)\n")


def plot(r: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    xs = [e["epoch"] for e in r["epochs"]]
    ax.plot(xs, [e["fid_kd"] for e in r["epochs"]], "o-", label="reader top (fid-kd, first token)")
    ax.plot(xs, [e["attention_all"] for e in r["epochs"]], "s-", label="reader top (attention-all)")
    ax.axhline(r["baselines"]["bm25_top1"], color="black", ls="--", label="BM25 top 1")
    ax.axhline(r["baselines"]["random_passage"], color="grey", ls=":", label="random passage")
    ax.set_xlabel("reader epoch")
    ax.set_ylabel("top passage holds an answer")
    ax.set_ylim(0, 1)
    ax2 = ax.twinx()
    ax2.plot(xs[1:], [e["loss"] for e in r["epochs"][1:]], color="tab:red", alpha=0.5, label="token loss")
    ax2.set_ylabel("token loss", color="tab:red")
    ax.legend(loc="center right", fontsize=8)
    ax.set_title(f"FiD reader probe: {r['questions']} questions, k={r['k']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
