"""DeepSpeed checkpoints on another world size: the project's own consolidate-and-reshard.

ZeRO 1-3 partition the fp32 master weights and the optimizer state over the ranks, and DeepSpeed
refuses to load such a checkpoint on another number of processes (``ZeRORuntimeException``). Its
converter to a "universal" checkpoint (``ds_to_universal``) knows Adam's state keys only (SGD's
momentum fails with ``KeyError: 'exp_avg'``). So every cit_fast DeepSpeed checkpoint also holds
``consolidated.pt``, written by rank 0 after a collective gather through DeepSpeed's public API
(``safe_get_full_fp32_param`` / ``safe_get_full_optimizer_state``):

    params     {name: full fp32 tensor}
    state      {name: {key: full tensor}}  every tensor the optimizer keeps per parameter
               (SGD's momentum_buffer, AdamW's exp_avg and exp_avg_sq, ...)
    scalars    {key: value}                per-parameter scalars, the same for all (AdamW's step)
    param_groups                           the optimizer's hyper-parameters (lr, momentum, ...)
    buffers, scheduler, zero_stage, world_size, optimizer (class name)

A run resumed with another world size builds its engine as usual (the new partitioning), lets the
optimizer create its state once, then writes every full tensor back with
``safe_set_full_fp32_param`` / ``safe_set_full_optimizer_state``: each rank keeps its own slice.
The file depends on no partitioning, so the ZeRO stage may change as well. The cost is one gather
of the fp32 weights and optimizer state to rank 0 per checkpoint (ResNet-sized models: seconds).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from .. import checkpoint as ckpt
from ..utils import print0

CONSOLIDATED = "consolidated.pt"


def _base_optimizer(engine) -> torch.optim.Optimizer:
    opt = engine.optimizer
    return getattr(opt, "optimizer", opt)  # ZeRO / bf16 wrappers hold the torch optimizer


def _flat_params(engine) -> List[Tuple[int, torch.Tensor]]:
    """(param-group index, flat fp32 partition) of every tensor the torch optimizer steps. ZeRO-3 hands
    its sub-groups to the optimizer one at a time (the group's params list is empty in between)."""
    opt = engine.optimizer
    if hasattr(opt, "fp32_partitioned_groups_flat"):  # ZeRO-3
        return [(opt.sub_group_to_group_id[i], flat) for i, flat in enumerate(opt.fp32_partitioned_groups_flat)]
    return [(gi, p) for gi, g in enumerate(_base_optimizer(engine).param_groups) for p in g["params"]]


def _state_keys(engine) -> Tuple[List[str], Dict[str, Any]]:
    """(tensor keys kept per parameter, scalar state) of the optimizer, from its first flat parameter."""
    base = _base_optimizer(engine)
    for _, flat in _flat_params(engine):
        st = base.state.get(flat, {})
        if st:
            tensors = [k for k, v in st.items() if torch.is_tensor(v) and v.shape == flat.shape]
            scalars = {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v)
                       for k, v in st.items() if k not in tensors}
            return tensors, scalars
    return [], {}


def _full_frozen(engine, p: torch.nn.Parameter) -> torch.Tensor:
    """A parameter outside the optimizer (frozen): whole on every rank, except under ZeRO-3."""
    if engine.cfg.dist.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            return p.detach().float().cpu().clone()
    return p.detach().float().cpu().clone()


def gather_consolidated(engine) -> Optional[Dict[str, Any]]:
    """The consolidated state of a DeepSpeed engine (collective; the result matters on rank 0 only).
    None for ZeRO-0, whose checkpoints load on any world size as they are."""
    if engine.cfg.dist.zero_stage == 0:
        return None
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    keys, scalars = _state_keys(engine)
    params: Dict[str, torch.Tensor] = {}
    state: Dict[str, Dict[str, torch.Tensor]] = {}
    for name, p in engine.module.named_parameters():
        full = safe_get_full_fp32_param(p) if p.requires_grad else None
        params[name] = full.detach().float().cpu().clone() if full is not None else _full_frozen(engine, p)
        if p.requires_grad and keys:
            state[name] = {k: safe_get_full_optimizer_state(p, k).detach().float().cpu().clone() for k in keys}
    base = _base_optimizer(engine)
    return {"params": params, "state": state, "scalars": scalars,
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in base.param_groups],
            "buffers": {n: b.detach().cpu().clone() for n, b in engine.module.named_buffers()},
            "scheduler": engine.scheduler.state_dict() if engine.scheduler is not None else None,
            "zero_stage": engine.cfg.dist.zero_stage, "world_size": engine.env.world_size,
            "optimizer": type(base).__name__}


def _materialise_optimizer_state(engine) -> None:
    """Let the torch optimizer create its (lazily built) per-parameter state over the new partitions:
    one step with zero gradients and a zero learning rate; every value is overwritten afterwards."""
    base = _base_optimizer(engine)
    lrs = [g["lr"] for g in base.param_groups]
    for g in base.param_groups:
        g["lr"] = 0.0
    for gi, flat in _flat_params(engine):
        group = base.param_groups[gi]
        kept = group["params"]
        group["params"] = [flat]  # one partition at a time (ZeRO-3 steps its sub-groups so)
        flat.grad = torch.zeros_like(flat)
        others = [g["params"] for g in base.param_groups if g is not group]
        for g in base.param_groups:
            if g is not group:
                g["params"] = []
        base.step()
        flat.grad = None
        for g, params in zip([g for g in base.param_groups if g is not group], others):
            g["params"] = params
        group["params"] = kept
    for g, lr in zip(base.param_groups, lrs):
        g["lr"] = lr
    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:  # ZeRO-1/2 and bf16: map each parameter's fragment into the new state
        engine.optimizer._hp_optimizer_states_linked = False
        link()


def load_consolidated(engine, path: Path, client: Dict[str, Any], saved_world: int) -> Dict[str, Any]:
    """Resume ``engine`` from the DeepSpeed checkpoint ``path`` written by ``saved_world`` processes."""
    path = Path(path)
    file = path / CONSOLIDATED
    if not file.is_file():
        raise ckpt.CheckpointError(f"checkpoint {path}: written by {saved_world} processes and it has no "
                                   f"{CONSOLIDATED} to re-shard from; resume it with {saved_world} processes")
    data = ckpt.safe_load(file, map_location="cpu", what="checkpoint file")
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    base = _base_optimizer(engine)
    if data["optimizer"] != type(base).__name__:
        raise ckpt.CheckpointError(f"checkpoint {path}: its optimizer is {data['optimizer']}, this run's is "
                                   f"{type(base).__name__} (optim.optimizer)")
    missing = [n for n, _ in engine.module.named_parameters() if n not in data["params"]]
    if missing:
        raise ckpt.CheckpointError(f"checkpoint {path}: does not fit this model (no {', '.join(missing[:3])})")
    if data["state"]:
        _materialise_optimizer_state(engine)
    device = next(engine.module.parameters()).device
    zero3 = engine.cfg.dist.zero_stage == 3
    for name, p in engine.module.named_parameters():
        full = data["params"][name].to(device)
        if p.requires_grad:
            safe_set_full_fp32_param(p, full)
            for key, value in data["state"].get(name, {}).items():
                safe_set_full_optimizer_state(p, value.to(device), key)
        if zero3:  # the working copy is partitioned too: write it whole, DeepSpeed re-partitions
            import deepspeed

            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                p.data.copy_(full.to(p.dtype))
        else:
            p.data.copy_(full.to(p.dtype))
    for st in (base.state[flat] for _, flat in _flat_params(engine) if flat in base.state):
        for key, value in data["scalars"].items():
            st[key] = value.clone().to(st[key].device) if torch.is_tensor(value) and key in st else value
    for g, saved in zip(base.param_groups, data["param_groups"]):
        g.update({k: v for k, v in saved.items() if k in g})
    buffers = dict(engine.module.named_buffers())
    with torch.no_grad():
        for name, b in data["buffers"].items():
            if name in buffers:
                buffers[name].copy_(b.to(buffers[name].device, buffers[name].dtype))
    if data["scheduler"] is not None and engine.scheduler is not None:
        engine.scheduler.load_state_dict(data["scheduler"])
    for attr in ("global_steps", "global_samples", "skipped_steps"):
        if attr in client:
            setattr(engine.model, attr, client[attr])
    print0(f"resumed a {saved_world}-process DeepSpeed checkpoint on {engine.env.world_size} process(es): "
           f"weights and optimizer state re-sharded from {file.name}")
    return client
