"""The training entry point: ``main(cfg)`` -> results dict (also written as results.json).

Skeleton (torchvision references style): set up, ``train_one_epoch``, ``evaluate``, checkpoint,
repeat. Runs on one CPU process or under torchrun (DDP); the engine hides which.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..data.build import build_datasets, build_pipeline
from ..data.pipeline import Batch, Pipeline
from ..models import create_model
from ..utils import atomic_write_json, print0
from . import checkpoint as ckpt
from .config import TrainConfig, save_config, to_dict
from .distributed import DistEnv, setup_distributed
from .evaluate import evaluate, model_inputs


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(cfg: TrainConfig, epoch_float: float) -> float:
    """LR as a factor of optim.lr: linear warm-up from lr/10, then multi-step or cosine decay."""
    o = cfg.optim
    if o.warmup_epochs and epoch_float < o.warmup_epochs:
        return 0.1 + 0.9 * epoch_float / o.warmup_epochs
    if o.schedule == "cosine":
        t = (epoch_float - o.warmup_epochs) / max(o.epochs - o.warmup_epochs, 1e-9)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return o.gamma ** sum(epoch_float >= m for m in o.milestones)


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)


def compute_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy on the intervened sample, plus on the original one under Eq. 12."""
    y = batch["label"]
    if "original" in batch:  # epoch-wise augmentation: one forward over both halves
        logits = model(torch.cat([batch["image"], batch["original"]]))
        a, b = logits.chunk(2)
        return F.cross_entropy(a, y) + F.cross_entropy(b, y)  # Eq. 12
    if "original_context" in batch:
        la = model(batch["content"], batch["context"])
        lb = model(batch["content"], batch["original_context"])
        return F.cross_entropy(la, y) + F.cross_entropy(lb, y)
    return F.cross_entropy(model(*model_inputs(batch)), y)


def train_one_epoch(cfg: TrainConfig, env: DistEnv, model, optimizer, scheduler, pipeline: Pipeline,
                    epoch: int, on_step=None) -> Dict[str, float]:
    model.train()
    n_batches = len(pipeline)
    if cfg.max_steps_per_epoch:
        n_batches = min(n_batches, cfg.max_steps_per_epoch)
    start = pipeline.start_batch
    loss_sum = torch.zeros((), device=env.device)
    seen = 0
    t0 = time.perf_counter()
    bar = None
    if cfg.progress and env.rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=n_batches, initial=start, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
                   leave=False, mininterval=1.0, dynamic_ncols=True)
    step_losses = []
    for step, batch in enumerate(pipeline, start=start):
        if step >= n_batches:
            break
        loss = compute_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach()
        step_losses.append(loss.detach())
        seen += len(batch["label"])
        if bar is not None:
            bar.update(1)
            if (step + 1) % cfg.log_interval == 0:
                bar.set_postfix(loss=f"{float(loss):.3f}")  # host sync: only at the log interval
        if on_step is not None:
            on_step(epoch, step + 1, n_batches)
    if bar is not None:
        bar.close()
    steps = len(step_losses)
    dt = time.perf_counter() - t0
    return {"loss": float(loss_sum) / max(steps, 1), "steps": steps, "samples_per_s": seen * env.world_size / dt,
            "step_losses": [float(x) for x in step_losses], "seconds": dt}


def _state(cfg, model, optimizer, scheduler, pipeline: Pipeline, epoch: int, step_in_epoch: int,
           history) -> Dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch, "step_in_epoch": step_in_epoch, "pipeline": {"epoch": epoch, "start_batch": step_in_epoch},
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "config": to_dict(cfg), "history": history}


def main(cfg: TrainConfig, stop_after_steps: Optional[int] = None) -> Dict[str, Any]:
    """Train and evaluate as configured; returns (and writes) the results.

    stop_after_steps: end the run after this many optimizer steps in total, having written a
    checkpoint there (used to test exact resume).
    """
    env = setup_distributed(cfg)
    if cfg.threads and env.device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed + env.rank)
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    if env.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")

    train_set, test_set = build_datasets(cfg.data)
    num_classes = cfg.model.num_classes or train_set.num_classes
    model = create_model(cfg.model.name, num_classes=num_classes).to(env.device)
    if cfg.model.init:
        state = ckpt.load_checkpoint(Path(cfg.model.init))
        model.load_state_dict(state["model"])
    train_pipe = build_pipeline(train_set, cfg, train=True, rank=env.rank, world_size=env.world_size, device=env.device)
    test_pipe = build_pipeline(test_set, cfg, train=False, rank=env.rank, world_size=env.world_size, device=env.device)
    steps_per_epoch = len(train_pipe)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} is larger than the training shard "
                         f"({len(train_pipe.shard_indices())} samples per rank): no full batch to train on")
    optimizer = build_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s / steps_per_epoch))
    ddp_model = env.wrap(model)

    history: list = []
    start_epoch, start_step = 0, 0
    resume_path = ckpt.resolve_resume(cfg.resume, ckpt_dir)
    if resume_path is not None:
        state = ckpt.load_checkpoint(resume_path, map_location=env.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, start_step = int(state["epoch"]), int(state["step_in_epoch"])
        history = state.get("history", [])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        print0(f"resumed from {resume_path} at epoch {start_epoch + 1}, step {start_step}")

    total_steps = start_epoch * steps_per_epoch + start_step
    stop = {"now": False}

    def on_step(epoch: int, step_in_epoch: int, n_batches: int) -> None:
        nonlocal total_steps
        total_steps += 1
        if stop_after_steps is not None and total_steps >= stop_after_steps:
            if env.rank == 0 and step_in_epoch < n_batches:
                ckpt.save_checkpoint(_state(cfg, model, optimizer, scheduler, train_pipe, epoch, step_in_epoch,
                                            history), ckpt_dir, epoch, step_in_epoch)
            stop["now"] = True
            raise _StopRun

    t_start = time.perf_counter()
    result: Dict[str, Any] = {}
    try:
        for epoch in range(start_epoch, cfg.optim.epochs):
            train_pipe.set_epoch(epoch)
            if epoch == start_epoch and start_step:
                train_pipe.load_state_dict({"epoch": epoch, "start_batch": start_step})
            stats = train_one_epoch(cfg, env, ddp_model, optimizer, scheduler, train_pipe, epoch, on_step)
            test_pipe.set_epoch(0)
            metrics = evaluate(model, test_pipe)
            record = {"epoch": epoch + 1, "train_loss": stats["loss"], "lr": optimizer.param_groups[0]["lr"],
                      "samples_per_s": stats["samples_per_s"], "test_top1": metrics["top1"],
                      "test_top5": metrics["top5"], "step_losses": stats["step_losses"]}
            history.append(record)
            print0(f"epoch {epoch + 1:3d}  loss {stats['loss']:.4f}  test top-1 {metrics['top1']:.2f}%  "
                   f"({stats['samples_per_s']:.0f} samples/s)")
            if env.rank == 0 and ((epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.optim.epochs):
                ckpt.save_checkpoint(_state(cfg, model, optimizer, scheduler, train_pipe, epoch + 1, 0, history),
                                     ckpt_dir, epoch + 1, 0)
            with open(out / f"log_rank{env.rank}.jsonl", "a") as f:
                f.write(json.dumps({k: v for k, v in record.items() if k != "step_losses"}) + "\n")
    except _StopRun:
        pass
    if stop["now"]:
        env.barrier()
        return {"stopped_at_step": total_steps, "history": history}
    final = history[-1] if history else {}
    result = {"test_top1": final.get("test_top1"), "test_top5": final.get("test_top5"),
              "epochs": cfg.optim.epochs, "history": history, "seconds": time.perf_counter() - t_start,
              "world_size": env.world_size, "model": cfg.model.name, "plan": cfg.intervention.plan,
              "config": to_dict(cfg)}
    if env.rank == 0:
        atomic_write_json(out / "results.json", result)
    env.barrier()
    return result


class _StopRun(Exception):
    pass
