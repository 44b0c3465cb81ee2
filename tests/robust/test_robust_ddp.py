"""DDP equivalence through the real DistillTrainer: 2 gloo ranks x batch 2 == 1 process x batch 4.

``ddp_train_script.py`` trains 4 steps (group size 2, in-batch negatives, KL + contrastive on
constructed teacher logits, dropout off, sequential sampler) and dumps the logged losses and the final
weights. With the sequential sampler accelerate gives rank ``r`` the ``r``-th half of each global batch,
so the gathered in-batch matrix is column-for-column the single-process one, and gather_with_grad +
DDP gradient averaging must reproduce the single-process gradient of the global mean.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _robust_helpers import HERE, free_port

SCRIPT = HERE / "ddp_train_script.py"
TIMEOUT = 180


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None)
    return env


def _run(cmd: list[str], out: Path) -> dict:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stderr[-4000:]}"
    return json.loads((out / "losses.json").read_text())


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_two_rank_ddp_loss_curve_matches_one_process(tmp_path, tiny_bert_no_dropout, toy_beir_dir):
    one, two = tmp_path / "one", tmp_path / "two"
    common = [str(SCRIPT), tiny_bert_no_dropout, str(toy_beir_dir)]
    single = _run([sys.executable, *common, str(one), "4"], one)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    ddp = _run([*torchrun, *common, str(two), "2"], two)

    assert single["world_size"] == 1 and ddp["world_size"] == 2
    assert single["steps"] == ddp["steps"] == [1, 2, 3, 4]
    # the curve moves (training happens), so agreement is not a trivial constant
    assert len({round(x, 3) for x in single["loss"]}) == 4
    torch.testing.assert_close(torch.tensor(ddp["loss"]), torch.tensor(single["loss"]), rtol=1e-4, atol=1e-6)
    # component means are logged rounded to 4 decimals
    for name in ("loss_kl", "loss_contrastive"):
        torch.testing.assert_close(torch.tensor(ddp[name]), torch.tensor(single[name]), rtol=0, atol=2e-4)

    w1, w2 = torch.load(one / "weights.pt"), torch.load(two / "weights.pt")
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-5, msg=f"final weight {key}")
