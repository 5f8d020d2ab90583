"""Gradient accumulation under DDP all-reduces once per optimizer step (no_sync on the other
micro-steps): the gradients and weights equal those of reducing at every micro-step."""
import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # two processes, ~10-40 s

ACCUM = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    from cit_fast.train.distributed import DistEnv
    from cit_fast.train.engine import DDPEngine

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        env = DistEnv(rank, world, 0, torch.device("cpu"))
        cfg = SimpleNamespace(dist=SimpleNamespace(grad_accum=ACCUM, grad_clip=0.0, precision="fp32"))
        result = {}
        for every in (True, False):
            torch.manual_seed(0)
            module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                         torch.nn.Linear(8 * 6 * 6, 5))
            opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
            engine = DDPEngine(cfg, env, module, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0))
            engine.reduce_every_micro_step(every)
            grads, syncs = [], []
            real_step = opt.step

            def step(*a, **k):  # the gradients the optimizer steps with
                grads.append([p.grad.clone() for p in module.parameters()])
                return real_step(*a, **k)

            opt.step = step
            data = torch.Generator().manual_seed(100 + rank)  # every rank its own batches
            for _ in range(2 * ACCUM):  # two optimizer steps
                x, y = torch.randn(6, 3, 8, 8, generator=data), torch.randint(0, 5, (6,), generator=data)
                syncs.append(engine.model.require_backward_grad_sync)
                engine.backward_step(torch.nn.functional.cross_entropy(engine.model(x), y))
            result[every] = {"grads": grads, "weights": [p.detach().clone() for p in module.parameters()],
                             "syncs": syncs}
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_no_sync_accumulation_equals_reducing_every_micro_step(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for res in ranks:
        assert res[True]["syncs"] == [True] * 2 * ACCUM
        assert res[False]["syncs"] == [False, False, False, True] * 2  # one all-reduce per optimizer step
        for a, b in zip(res[True]["grads"], res[False]["grads"]):
            for ga, gb in zip(a, b):
                torch.testing.assert_close(gb, ga, rtol=1e-5, atol=1e-7)
        for wa, wb in zip(res[True]["weights"], res[False]["weights"]):
            torch.testing.assert_close(wb, wa, rtol=1e-5, atol=1e-7)
    for wa, wb in zip(ranks[0][False]["weights"], ranks[1][False]["weights"]):
        assert torch.equal(wa, wb)  # the ranks agree
