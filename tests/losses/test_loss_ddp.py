"""gather_with_grad under a real 2-process gloo group: InfoNCE over gathered in-batch negatives in DDP
gives the same gradients as one process computing the whole global batch."""

from __future__ import annotations

import gc
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from densekd.losses import InfoNCE, ScoreBatch
from densekd.losses.batch import in_batch_repeats, positive_repeats
from densekd.scores import gather_with_grad, global_in_batch, group_scores, in_batch_scores

WORLD, B_LOCAL, G, DIM = 2, 2, 3, 6


class _DualEncoder(nn.Module):
    """Untied linear query/passage towers, so query- and passage-side gradients are checked apart."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q = nn.Linear(DIM, 5)
        self.p = nn.Linear(DIM, 5)

    def forward(self, q_x: torch.Tensor, p_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q(q_x), self.p(p_x)


def _global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    q_x = torch.randn(WORLD * B_LOCAL, DIM, generator=gen)
    p_x = torch.randn(WORLD * B_LOCAL * G, DIM, generator=gen)
    mask = torch.ones(WORLD * B_LOCAL, G, dtype=torch.bool)
    mask[3, 2] = False  # a padded negative on rank 1 must be hidden from rank 0's queries too
    return q_x, p_x, mask


def _keys() -> tuple[torch.Tensor, torch.Tensor]:
    """Passage keys ``[4, G]`` and positive keys ``[4, 1]``: query 3 (rank 1) has query 0's positive among
    its negatives, a false negative that rank 0 can only see in the gathered keys."""
    keys = torch.arange(WORLD * B_LOCAL * G, dtype=torch.long).reshape(WORLD * B_LOCAL, G)
    keys[3, 1] = keys[0, 0]
    return keys, keys[:, :1].clone()


def _loss(q: torch.Tensor, p: torch.Tensor, batch_kwargs: dict) -> torch.Tensor:
    return InfoNCE(temperature=0.5)(ScoreBatch(student=group_scores(q, p, G), **batch_kwargs))["contrastive"]


def _worker(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    # A file store, not tcp://: with TCP, rank 0 hosts the store and could exit while rank 1 is still
    # tearing down, which aborted rank 1 ("terminate called without an active exception") about 1 run in 15.
    dist.init_process_group(
        "gloo", init_method=f"file://{Path(out_dir) / 'store'}", rank=rank, world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        q_x, p_x, mask = _global_batch()
        rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        p_rows = slice(rank * B_LOCAL * G, (rank + 1) * B_LOCAL * G)
        model = DistributedDataParallel(_DualEncoder())
        q, p = model(q_x[rows], p_x[p_rows])
        res = global_in_batch(q, p, mask[rows])
        keys, positives = _keys()
        exclude = in_batch_repeats((keys[rows], positives[rows]), res.offset, G, gathered=True)
        loss = _loss(q, p, {
            "in_batch": res.scores, "in_batch_mask": res.mask, "in_batch_offset": res.offset,
            "mask": mask[rows], "in_batch_exclude": exclude,
        })
        loss.backward()  # DDP averages the parameter gradients over the 2 ranks

        # uneven row counts: rank 0 holds 1 row, rank 1 holds 2
        x = (10.0 * rank + torch.arange(rank + 1, dtype=torch.float32))[:, None].requires_grad_(True)
        gathered = gather_with_grad(x)
        coeff = torch.tensor([[1.0], [2.0], [3.0]])
        (gathered * coeff).sum().backward()
        torch.save(
            {
                "loss": loss.detach(),
                "offset": res.offset,
                "grads": {k: v.grad for k, v in model.module.named_parameters()},
                "gathered": gathered.detach(),
                "x_grad": x.grad,
                "exclude": exclude,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
        # free the DDP reducer while the process group is still registered: freed after
        # destroy_process_group, its last reference ran ~ProcessGroupGloo under the GIL while a gloo thread
        # waited for the GIL (a teardown deadlock seen once in CI)
        del model, q, p, loss, res
        gc.collect()
        dist.barrier()  # both ranks are done with gloo before either tears it down
    finally:
        dist.destroy_process_group()


def test_ddp_gathered_infonce_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    # reference: one process, the whole global batch, mean over all 4 queries
    q_x, p_x, mask = _global_batch()
    model = _DualEncoder()
    q, p = model(q_x, p_x)
    keys, positives = _keys()
    exclude = positive_repeats(keys.reshape(-1), positives, 0, G)
    assert exclude.sum() == 1 and exclude[0, 3 * G + 1]  # only query 0 sees its positive repeated
    loss = _loss(q, p, {"in_batch": in_batch_scores(q, p), "mask": mask, "in_batch_exclude": exclude})
    loss.backward()

    assert [r["offset"] for r in results] == [0, B_LOCAL * G]
    torch.testing.assert_close(torch.cat([r["exclude"] for r in results]), exclude)  # gathered keys
    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), loss.detach())
    for r in results:
        for name, param in model.named_parameters():
            torch.testing.assert_close(r["grads"][name], param.grad, msg=f"gradient of {name}")

    # uneven gather: rows in rank order, and each rank's rows get the sum of both ranks' gradients
    for rank, r in enumerate(results):
        assert r["gathered"].flatten().tolist() == [0.0, 10.0, 11.0]
        expected = [[2.0]] if rank == 0 else [[4.0], [6.0]]
        assert r["x_grad"].tolist() == expected
