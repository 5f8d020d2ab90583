"""The training entry point: ``main(cfg)`` -> results dict (also written as results.json).

Skeleton (torchvision references style): set up, ``train_one_epoch``, ``evaluate``, checkpoint,
repeat. Runs unchanged on one CPU process, under torchrun (DDP) or under deepspeed; the engine
hides which. Resume is exact: model, optimizer, LR schedule, scaler, epoch, step within the
epoch, the pipeline's position and every rank's RNG states are in the checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..config import RESOLVED, TrainConfig, finalize, save_config, to_dict
from ..data.build import build_datasets, build_pipeline, require_masks
from ..data.spec import train_steps
from ..data.pipelines.batch import ImageBatch, ModelBatch
from ..models import build_model, model_task
from ..models.causal_multilabel import MultiLabelOutput
from ..eval.diagnostics import probe_batches, probes_line
from ..models.confounders import fit_confounders
from ..metrics import TrainingMetrics
from .. import checkpoint as ckpt
from ..errors import CheckpointError, UsageError, UserError
from ..utils import atomic_write_json, print0
from .callbacks import Callback, ProgressBar, PrometheusSteps, StepCheckpoints, StepInfo, StopAfter
from .distributed import DistEnv, setup_distributed
from .divergence import Diverged, DivergenceWatch, chance_loss, skipped_mask
from .engine import Engine, autocast_dtype, build_engine
from .membership import Membership
from .evaluate import evaluate
from .losses import build_loss, feature_split_loss, soft_cross_entropy

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
    if o.optimizer == "adamw":  # an option for the transformer heads (SGD is the CIT paper's recipe)
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)


def compute_loss(model, batch: ModelBatch, criterion=None) -> torch.Tensor:
    """The loss of one step: over the intervened sample, plus the original one under Eq. 12
    (``batch.views()``). Against ``batch.target`` after Mixup / CutMix: soft cross-entropy for single
    labels, the configured BCE / ASL (``criterion``) for mixed multi-hot targets."""
    y = batch.targets()
    if batch.target is not None and y.shape != batch.label.shape and batch.label.dim() == 1:
        def loss_of(logits):  # soft one-hot targets of single labels
            return soft_cross_entropy(logits, y)
    elif criterion is not None:
        def loss_of(logits):
            return criterion(logits, y)
    else:
        def loss_of(logits):
            return F.cross_entropy(logits.float(), y)

    def ce(out):  # a multi-label training forward may add auxiliary logits (MultiLabelOutput: branch1_loss)
        return out.loss(loss_of) if isinstance(out, MultiLabelOutput) else loss_of(out)

    views = batch.views()
    if isinstance(batch, ImageBatch) and len(views) == 2:  # Eq. 12 for one-input models: one forward over both
        a, b = model(torch.cat([views[0][0], views[1][0]])).chunk(2)
        return ce(a) + ce(b)
    return sum(ce(model(*inputs)) for inputs in views)


def _rng_states() -> Dict[str, Any]:
    """This process's RNG states as tensors and plain Python values only, so that a checkpoint opens
    with ``torch.load``'s safe default (``weights_only=True``) and no allow-list."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"bit_generator": str(name), "key": [int(k) for k in key], "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_states(s: Dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"].cpu())
    state = s["numpy"]
    if isinstance(state, dict):
        state = (state["bit_generator"], np.asarray(state["key"], np.uint32), state["pos"], state["has_gauss"],
                 state["cached_gaussian"])
    np.random.set_state(state)  # (checkpoints written before kept numpy's own tuple with an array)
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _all_rng_states(env: DistEnv) -> list:
    """Every rank's RNG states, gathered (collective: all ranks call it)."""
    mine = _rng_states()
    if not env.distributed:
        return [mine]
    out = [None] * env.world_size
    dist.all_gather_object(out, mine)
    return out


class Trainer:
    """Holds what one run needs; ``fit`` runs it. Set-up is a sequence of named steps."""

    def __init__(self, cfg: TrainConfig, callbacks: Sequence[Callback] = ()):
        self.cfg = cfg = finalize(cfg)  # once: load_config's config comes back as it is (config.is_final)
        self.env = setup_distributed(cfg.device, cfg.dist.engine)
        if cfg.threads and self.env.device.type == "cpu":
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed + self.env.rank)
        self.out = Path(cfg.out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self._prepare_out_dir()
        self._build_data()
        self._build_model_and_engine()
        self.resolved = self._resolved()
        if self.env.rank == 0:  # config.yaml again, now with what the run resolved from its data
            save_config(cfg, self.out / "config.yaml", self.resolved)
        self.metrics = TrainingMetrics(cfg.metrics, self.env.rank, self.env.local_rank, cfg.model.name,
                                       cfg.out_dir, self.env.device.type)
        self.callbacks = self._callbacks(callbacks)
        self.history: list = []
        self.start_epoch, self.start_step = 0, 0
        self.total_steps = 0
        self.last_checkpoint: Optional[Path] = None  # written or resumed from by this run: finite
        self.watch = DivergenceWatch(self.env, self.steps_per_epoch, self.engine.loss_scaled,
                                     chance_loss(self.num_classes, self.train_set.multilabel), self._advice())

    def _resolved(self) -> Dict[str, Any]:
        """What the run found beside what was asked (config.yaml's and the checkpoints' ``resolved``
        section): model.num_classes 0 and data.image_size 0 mean "from the data"; these are the values."""
        cfg, train = self.cfg, self.train_set
        size = cfg.data.image_size
        if not size and len(train):  # the source's own size (uniform arrays)
            shape = train.images.shape[1:3] if train.in_memory else None
            with contextlib.suppress(UserError, OSError):
                shape = shape or train.image(0).shape[:2]
            if shape is not None:
                h, w = (int(x) for x in shape)
                size = h if h == w else [h, w]
        return {"num_classes": int(self.num_classes), "image_size": size, "source": cfg.data.source,
                "task": self.task, "multilabel": bool(train.multilabel), "train_samples": len(train),
                "test_samples": len(self.test_set), "world_size": self.env.world_size,
                "global_batch_size": cfg.data.batch_size * self.env.world_size * cfg.dist.grad_accum,
                "steps_per_epoch": self.steps_per_epoch}

    def _advice(self) -> str:
        """What a diverged or exploding run names: the learning rate and the batch size it ran with."""
        cfg = self.cfg
        glob = cfg.data.batch_size * self.env.world_size * cfg.dist.grad_accum
        return (f"optim.lr={cfg.optim.lr:g} and data.batch_size={cfg.data.batch_size} (global batch {glob}) may be "
                f"too high for this model: lower optim.lr, or add optim.warmup_epochs / dist.grad_clip")

    def _last_checkpoint(self) -> str:
        if self.last_checkpoint is not None:
            return str(self.last_checkpoint)
        return f"none (no checkpoint in {self.ckpt_dir} from this run)"

    def _callbacks(self, extra: Sequence[Callback]) -> list:
        cfg = self.cfg
        out: list = [ProgressBar()] if cfg.progress and self.env.rank == 0 else []
        if self.metrics.enabled:
            out.append(PrometheusSteps())
        if cfg.checkpoint_every_steps:
            out.append(StepCheckpoints(cfg.checkpoint_every_steps, cfg.dist.grad_accum))
        return out + list(extra)

    def _prepare_out_dir(self) -> None:
        """Rank 0 creates out_dir and writes config.yaml; a directory we cannot write is one clear error."""
        if self.env.rank != 0:
            return
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out / "config.yaml")
        except OSError as e:
            raise UsageError(f"out_dir {self.out}: cannot write there ({e.strerror or e}); set out_dir= to a "
                             f"writable directory") from None

    def _build_data(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        self.train_set, self.test_set = build_datasets(d)  # the confounders are fitted over train_set
        self.num_classes = cfg.model.num_classes or self.train_set.num_classes
        self.task = model_task(cfg.model.name, self.train_set.multilabel, cfg.model.task)
        needs = []
        if cfg.intervention.plan != "none":
            needs.append(f"intervention.plan={cfg.intervention.plan}")
        if self.task == "double":
            needs.append(f"the double-branch model {cfg.model.name} (content and context)")
        if needs:
            why = " and ".join(needs)
            require_masks(self.train_set, why, d.missing_masks, d.train)
            if self.task == "double":
                require_masks(self.test_set, why, d.missing_masks, d.test)

    def _build_model_and_engine(self) -> None:
        cfg, env = self.cfg, self.env
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        module = build_model(cfg.model, self.num_classes).to(env.device)  # with model.init / init_single
        seed_everything(cfg.seed + env.rank)
        in_dtype = torch.float32
        if cfg.dist.engine == "deepspeed" and cfg.dist.precision != "fp32":
            in_dtype = autocast_dtype(cfg.dist.precision)  # DeepSpeed runs the module in that dtype
        kw = dict(rank=env.rank, world_size=env.world_size, device=env.device, out_dtype=in_dtype)
        output = "double" if self.task == "double" else "image"  # content/context for double-branch models
        self.train_pipe = build_pipeline(self.train_set, cfg, train=True, output=output, **kw)
        self.test_pipe = build_pipeline(self.test_set, cfg, train=False, output=output, **kw)
        o = cfg.optim
        self.criterion = build_loss(o.loss, self.train_set.multilabel, o.asl_gamma_neg, o.asl_gamma_pos, o.asl_clip)
        if cfg.model.feature_split:  # Singh et al.'s weighted loss: the biased pairs and the training labels
            self.criterion = feature_split_loss(cfg.model, o.loss, self.train_set, self.task)
        steps = self.steps_per_epoch = train_steps(len(self.train_pipe), cfg.max_steps_per_epoch, cfg.dist.grad_accum,
                                                   cfg.data.batch_size, len(self.train_pipe.shard_indices()))
        opt_steps_per_epoch = steps // cfg.dist.grad_accum
        self.engine: Engine = build_engine(
            cfg, env, module, lambda m: build_optimizer(cfg, m),
            lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s / opt_steps_per_epoch)))

    # -- checkpoints ------------------------------------------------------------------------------
    def save(self, epoch: int, step_in_epoch: int) -> None:
        """Checkpoint (epoch = epochs completed, step_in_epoch = batches done in the current one), never
        of a run that has diverged: the losses since the last log point and the weights are checked
        first (collective; raises Diverged on every rank, and nothing is written)."""
        self.watch.check(self._last_checkpoint, explosion=False)
        self.watch.weights(self.engine.nonfinite_weights(), epoch, step_in_epoch, self._last_checkpoint)
        client = {"pipeline": {"epoch": epoch, "start_batch": step_in_epoch}, "rng": _all_rng_states(self.env),
                  "config": {**to_dict(self.cfg), RESOLVED: self.resolved}, "history": self.history,
                  "world_size": self.env.world_size}
        t0 = time.perf_counter()
        self.engine.save(self.ckpt_dir, epoch, step_in_epoch, client)
        self.metrics.checkpoint(time.perf_counter() - t0)
        self.last_checkpoint = self.ckpt_dir / (ckpt.deepspeed_tag(epoch, step_in_epoch) if self.cfg.dist.engine ==
                                                "deepspeed" else ckpt.checkpoint_name(epoch, step_in_epoch))

    def maybe_resume(self) -> None:
        """resume=auto: the newest complete checkpoint that loads (a corrupt newest one is skipped with a
        warning); resume=PATH: that checkpoint, or one clear error."""
        cfg = self.cfg
        event = self._note_membership()
        if not cfg.resume:
            return
        if cfg.resume == "auto":
            candidates = list(reversed(self.engine.list_checkpoints(self.ckpt_dir)))
            if not candidates:
                print0(event + f"resume=auto: no complete checkpoint in {self.ckpt_dir}; starting fresh")
                return
        else:
            candidates = [Path(cfg.resume)]
            if not candidates[0].exists():
                raise CheckpointError(f"resume: checkpoint {cfg.resume} not found")
        for k, path in enumerate(candidates):
            try:
                state = self.engine.load(path)
                break
            except CheckpointError as e:
                if cfg.resume != "auto" or k + 1 == len(candidates):
                    raise
                print0(f"warning: resume=auto: skipping {path.name}, which cannot be used ({e}); "
                       f"trying {candidates[k + 1].name}", file=sys.stderr)
        self.start_epoch, self.start_step = int(state["epoch"]), int(state["step_in_epoch"])
        self.last_checkpoint = path
        self.history = state.get("history", [])
        rngs = state.get("rng") or []
        if len(rngs) == self.env.world_size:
            _set_rng_states(rngs[self.env.rank])
        else:  # a different world size: per-rank streams cannot carry over
            seed_everything(cfg.seed + self.env.rank + 7919 * (self.start_epoch + 1))
        print0(event + f"resumed from {path} at epoch {self.start_epoch + 1}, step {self.start_step}")

    def _note_membership(self) -> str:
        """The nodes of this start against the previous start's (collective): the metrics' world size,
        node count and restarts, and rank 0's event line ('restart 1: node b left; world size 2 -> 1
        (nodes: a); ' before the resume line), or '' for a run's first start."""
        m = Membership.gather(self.out, self.env.world_size, bool(self.cfg.resume), self.env.rank)
        self.membership = m
        self.metrics.membership(m.world_size, len(m.nodes), m.restarts)
        if self.env.rank == 0:
            m.save(self.out)
        line = m.event_line()
        return f"{line}; " if line else ""

    def maybe_fit_confounders(self, epoch: int) -> None:
        """Causal multi-label models: k-means confounders over the training set, before the first epoch
        (and every model.confounder_refresh epochs); a run resumed mid-epoch has them in its checkpoint."""
        module, refresh = self.engine.module, self.cfg.model.confounder_refresh
        if not hasattr(module, "confounders") or (epoch == self.start_epoch and self.start_step):
            return
        if not (epoch == 0 or (refresh and epoch % refresh == 0)):
            return
        cfg, env = self.cfg, self.env
        pipe = build_pipeline(self.train_set, cfg, train=False, rank=env.rank, world_size=env.world_size,
                              device=env.device, out_dtype=self.test_pipe.spec.out_dtype)  # its shard, no augmentation
        t0 = time.perf_counter()
        with self.engine.eval_context():
            stats = fit_confounders(module, pipe, seed=cfg.seed + epoch, iters=cfg.model.kmeans_iters,
                                    tokens_per_image=cfg.model.confounder_tokens)
        print0(f"confounders ({module.confounder_source}, K={module.confounders.num}) fitted in "
               f"{time.perf_counter() - t0:.1f} s" + (f", inertia {stats['inertia']:.4g}"
                                                      if stats["inertia"] == stats["inertia"] else ""))

    # -- training ----------------------------------------------------------------------------------
    def train_one_epoch(self, epoch: int) -> Dict[str, Any]:
        cfg, env, engine, pipe = self.cfg, self.env, self.engine, self.train_pipe
        engine.model.train()
        start = pipe.start_batch
        step_losses, step_skipped, undecided = [], [], 0  # skipped: the loss scaler's flag of each micro-step
        seen = 0
        for cb in self.callbacks:
            cb.on_epoch_start(self, epoch, start)
        t0 = t_prev = time.perf_counter()
        for step, batch in enumerate(pipe, start=start):
            if step >= self.steps_per_epoch:
                break
            t_batch = time.perf_counter()
            with engine.autocast():
                loss = compute_loss(engine.model, batch, self.criterion)
            self.watch.record(epoch, step, loss)
            skipped = engine.backward_step(loss)  # None inside an accumulation
            self.watch.optimizer_step(skipped)
            step_losses.append(loss.detach())
            undecided += 1
            if skipped is not None:
                step_skipped += [skipped] * undecided
                undecided = 0
            seen += len(batch)
            self.total_steps += 1
            t_end = time.perf_counter()
            last = step + 1 == self.steps_per_epoch
            info = StepInfo(epoch, step, self.total_steps, len(batch), step_losses[-1], t_end - t_prev,
                            t_batch - t_prev, log_point=(step + 1) % cfg.log_interval == 0 or step == start or last,
                            last_in_epoch=last)
            t_prev = t_end
            if info.log_point:  # non-finite loss: every rank stops here together (collective, one sync)
                self.watch.check(self._last_checkpoint)
            if any([cb.on_step_end(self, info) for cb in self.callbacks]):  # every callback runs, then stop
                if not last:
                    self.save(epoch, step + 1)
                raise _StopRun
        for cb in self.callbacks:
            cb.on_epoch_end(self, epoch)
        dt = time.perf_counter() - t0
        # per-step losses averaged over ranks (= the global batch's loss): one collective per epoch
        losses = torch.stack(step_losses).float() if step_losses else torch.zeros(0, device=env.device)
        if env.distributed and dist.is_initialized():
            dist.all_reduce(losses)
            losses /= env.world_size
        skipped = skipped_mask(step_skipped + [False] * undecided, losses.device)  # the same on every rank
        losses, skipped = torch.stack([losses, skipped.float()]).cpu().tolist()  # host sync: once per epoch
        # a step the fp16 loss scaler skipped (nan, inf or an overflowing finite loss) is not averaged in
        kept = [x for x, s in zip(losses, skipped) if not s and math.isfinite(x)]
        return {"loss": sum(kept) / len(kept) if kept else float("nan"), "steps": len(losses), "seconds": dt,
                "samples_per_s": seen * env.world_size / dt, "step_losses": losses}

    def fit(self) -> Dict[str, Any]:
        cfg, env = self.cfg, self.env
        self.maybe_resume()
        self.total_steps = self.start_epoch * self.steps_per_epoch + self.start_step
        t_start = time.perf_counter()
        try:
            for epoch in range(self.start_epoch, cfg.optim.epochs):
                self.metrics.set_epoch(epoch + 1)
                self.train_pipe.set_epoch(epoch)
                self.maybe_fit_confounders(epoch)
                if epoch == self.start_epoch and self.start_step:
                    self.train_pipe.load_state_dict({"epoch": epoch, "start_batch": self.start_step})
                stats = self.train_one_epoch(epoch)
                record = {"epoch": epoch + 1, "train_loss": stats["loss"], "lr": self.engine.lr,
                          "samples_per_s": stats["samples_per_s"], "step_losses": stats["step_losses"]}
                line = f"epoch {epoch + 1:3d}  loss {stats['loss']:.4f}  "
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.optim.epochs:
                    self.test_pipe.set_epoch(0)
                    with self.engine.eval_context():
                        metrics = evaluate(self.engine.module, self.test_pipe)
                    record.update(test_top1=metrics["top1"], test_top5=metrics["top5"])
                    if "mAP" in metrics:
                        record["test_mAP"] = metrics["mAP"]
                    self.metrics.evaluation(top1=metrics["top1"], top5=metrics["top5"],
                                            **({"map": metrics["mAP"]} if "mAP" in metrics else {}))
                    line += f"test top-1 {metrics['top1']:.2f}%  " + (f"mAP {metrics['mAP']:.2f}  " if "mAP" in metrics else "")
                self.history.append(record)
                print0(line + f"({stats['samples_per_s']:.0f} samples/s)")
                if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.optim.epochs:
                    self.save(epoch + 1, 0)
                with open(self.out / f"log_rank{env.rank}.jsonl", "a") as f:
                    f.write(json.dumps({k: v for k, v in record.items() if k != "step_losses"}) + "\n")
        except _StopRun:
            env.barrier()
            return {"stopped_at_step": self.total_steps, "history": self.history}
        finally:
            self.metrics.close()
        final = self.history[-1] if self.history else {}
        result = {"test_top1": final.get("test_top1"), "test_top5": final.get("test_top5"),
                  "test_mAP": final.get("test_mAP"), "task": self.task,
                  "epochs": cfg.optim.epochs, "history": self.history, "seconds": time.perf_counter() - t_start,
                  "world_size": env.world_size, "engine": cfg.dist.engine, "model": cfg.model.name,
                  "plan": cfg.intervention.plan, "config": to_dict(cfg), RESOLVED: self.resolved}
        probes = probe_batches(self.engine.module, self.test_pipe) if self.task == "multilabel" else {}
        if probes:  # a causal multi-label model: does its intervention act? (eval.diagnostics)
            result["intervention"] = probes
            print0(probes_line(probes))
        if env.rank == 0:
            atomic_write_json(self.out / "results.json", result)
        env.barrier()
        return result


def main(cfg: TrainConfig, stop_after_steps: Optional[int] = None,
         callbacks: Sequence[Callback] = ()) -> Dict[str, Any]:
    """Train and evaluate as configured; returns (and rank 0 writes) the results.

    stop_after_steps: end the run after this many micro-steps in total, having checkpointed there
    (used to test exact resume); callbacks: more step hooks (train/callbacks.py), e.g. the tests'
    fault injection.
    """
    extra = list(callbacks) + ([StopAfter(stop_after_steps)] if stop_after_steps is not None else [])
    trainer = Trainer(cfg, extra)
    try:
        return trainer.fit()
    finally:
        trainer.env.shutdown()


class _StopRun(Exception):
    pass
