"""Two training engines behind one small interface: ``ddp`` (torch DDP, also single-process) and
``deepspeed`` (ZeRO 0-3, bf16/fp16, gradient accumulation and clipping).

The loop only calls:
    engine.model(*inputs)            forward (wrapped model)
    engine.backward_step(loss)       backward; at an accumulation boundary: clip, step, LR step;
                                     returns whether the loss scaler skipped that step (None between)
    engine.loss_scaled               a loss scaler may skip steps (fp16)
    engine.nonfinite_weights()       (count, tensor names) of nan/inf weights (collective)
    engine.lr                        current learning rate
    engine.save(dir, epoch, step, client_state) / engine.load(path) -> client_state
    engine.list_checkpoints(dir)     complete checkpoints, oldest first (never a half-written one)
Batch sizes are derived once: global = data.batch_size (micro, per rank) x world x grad_accum.
"""
from __future__ import annotations

import contextlib
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..utils import atomic_write_text, read_mapping_file
from .. import checkpoint as ckpt
from ..config import merge_trees
from .reshard import CONSOLIDATED, gather_consolidated, load_consolidated
from .distributed import DistEnv
from .sync_bn import convert_sync_batchnorm



def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class Engine(ABC):
    def __init__(self, cfg, env: DistEnv, module: torch.nn.Module):
        self.cfg, self.env, self.module = cfg, env, module

    @property
    def accum(self) -> int:
        return self.cfg.dist.grad_accum

    @abstractmethod
    def backward_step(self, loss: torch.Tensor) -> Optional[Union[bool, torch.Tensor]]:
        """Backward; at an accumulation boundary also the optimizer step, returning whether the loss
        scaler skipped it (a bool, or a device bool scalar that is not read back); None between."""

    @property
    def loss_scaled(self) -> bool:
        """Whether a loss scaler may skip optimizer steps (fp16 overflow)."""
        return False

    def _local_weights(self) -> Iterator[Tuple[str, torch.Tensor]]:
        """This rank's parameters and buffers."""
        return iter(self.module.state_dict().items())

    def _sharded(self) -> bool:
        """Whether ranks hold different parts of the weights (their non-finite counts add up)."""
        return False

    def nonfinite_weights(self) -> Tuple[int, List[str]]:
        """Collective: how many weights are nan/inf, over every rank, and in which tensors (this
        rank's). Host sync: once (called before checkpoints only)."""
        count, names = ckpt.nonfinite_values(self._local_weights())
        if self.env.distributed and dist.is_initialized():
            box = torch.tensor([count], dtype=torch.int64, device=self.env.device)
            dist.all_reduce(box, op=dist.ReduceOp.SUM if self._sharded() else dist.ReduceOp.MAX)
            count = int(box.item())  # host sync: before a checkpoint only
        return count, names or (["(another rank's shard)"] if count else [])

    @property
    @abstractmethod
    def lr(self) -> float: ...

    @abstractmethod
    def save(self, directory: Path, epoch: int, step_in_epoch: int, client_state: Dict[str, Any]) -> None: ...

    @abstractmethod
    def load(self, path: Path) -> Dict[str, Any]: ...

    @staticmethod
    @abstractmethod
    def list_checkpoints(directory: Path) -> List[Path]: ...

    def eval_context(self):
        """Context in which ``self.module`` holds its full parameters on every rank."""
        return contextlib.nullcontext()

    def autocast(self):
        dtype = autocast_dtype(self.cfg.dist.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=dtype)


class DDPEngine(Engine):
    """torch DistributedDataParallel (gloo on CPU, NCCL on GPU); plain module on one process."""

    def __init__(self, cfg, env: DistEnv, module, optimizer, scheduler):
        super().__init__(cfg, env, module)
        self.model = env.wrap(module)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.dist.precision == "fp16")
        self._micro = 0
        # False: DDP all-reduces the gradients only at the last micro-step of an accumulation (its
        # no_sync), as exact as reducing every micro-step (a sum of sums) with 1/grad_accum of the
        # traffic; True reduces every micro-step (the bench compares the two)
        self.sync_every_micro_step = False
        self._set_grad_sync()

    def reduce_every_micro_step(self, on: bool = True) -> None:
        """All-reduce at every micro-step instead (what the bench and the tests compare with)."""
        self.sync_every_micro_step = on
        self._set_grad_sync()

    def _set_grad_sync(self) -> None:
        """Before the next micro-step's forward (where DDP reads it): reduce in its backward?"""
        if hasattr(self.model, "require_backward_grad_sync"):
            last = (self._micro + 1) % self.accum == 0
            self.model.require_backward_grad_sync = last or self.sync_every_micro_step

    @property
    def loss_scaled(self) -> bool:
        return self.scaler.is_enabled()

    def backward_step(self, loss: torch.Tensor):
        self.scaler.scale(loss / self.accum).backward()
        self._micro += 1
        self._set_grad_sync()
        if self._micro % self.accum:
            return None
        if self.cfg.dist.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.dist.grad_clip)
        # GradScaler halves its scale exactly when it found inf/nan gradients and skipped the step;
        # its scale tensor (not get_scale(), which syncs) compared on the device: no host sync
        before = self.scaler._scale.clone() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return False if before is None else self.scaler._scale < before

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def save(self, directory, epoch, step_in_epoch, client_state):
        error = None
        if self.env.rank == 0:
            state = {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                     "epoch": epoch, "step_in_epoch": step_in_epoch, **client_state}
            try:
                ckpt.save_checkpoint(state, Path(directory), epoch, step_in_epoch, keep=self.cfg.keep_checkpoints)
            except ckpt.CheckpointError as e:  # the write failed (disk full, I/O error): every rank stops
                error = str(e)
        # nobody moves on (or exits) before the checkpoint is complete, and all stop if it failed
        error = _agree_on_error(self.env, error, src=0)
        if error:
            raise ckpt.CheckpointError(error)

    def load(self, path):
        state = ckpt.load_checkpoint(Path(path), map_location=self.env.device)
        ckpt.refuse_nonfinite(state["model"], Path(path))  # an older version's checkpoint of a diverged run
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        return state

    @staticmethod
    def list_checkpoints(directory):
        return ckpt.list_checkpoints(Path(directory))


def _agree_on_error(env: DistEnv, error: Optional[str], src: Optional[int] = None) -> Optional[str]:
    """Collective: the error of rank ``src`` (or the first rank's that has one) on every rank, so
    that all ranks stop together instead of waiting at the next collective for the one that failed."""
    if not (env.distributed and dist.is_initialized()):
        return error
    if src is not None:
        box = [error]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    errors: List[Optional[str]] = [None] * env.world_size
    dist.all_gather_object(errors, error)
    return next((e for e in errors if e), None)


def deepspeed_config(cfg, world_size: int) -> Dict[str, Any]:
    """The DeepSpeed JSON config derived from ours; a user JSON (dist.deepspeed_config) overrides it."""
    d = cfg.dist
    micro = cfg.data.batch_size
    conf: Dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": d.grad_accum,
        "train_batch_size": micro * world_size * d.grad_accum,
        "gradient_clipping": d.grad_clip,
        "zero_optimization": {"stage": d.zero_stage},
        "bf16": {"enabled": d.precision == "bf16"},
        "fp16": {"enabled": d.precision == "fp16", "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,  # our SGD + Nesterov, as the paper trains
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if d.deepspeed_config:  # JSON is YAML: one reader for every mapping file
        conf = merge_trees(conf, read_mapping_file(Path(d.deepspeed_config), "dist.deepspeed_config", ConfigError))
    return conf



def _forget_stale_deepspeed_groups() -> None:
    """DeepSpeed keeps its clone of the world group in a module global (deepspeed.utils.groups._WORLD_GROUP)
    and never drops it: a second engine in the same process, after the first run's process group was
    destroyed (a sweep or a test suite in one interpreter), would be handed a group of a dead world
    ("Group ... is not registered"). Drop the clone when it is not a group of the live world."""
    from deepspeed.utils import groups

    cached = getattr(groups, "_WORLD_GROUP", None)
    if cached is None:
        return
    live = dist.is_initialized() and cached in dist.distributed_c10d._world.pg_group_ranks
    if not live:
        groups._WORLD_GROUP = None


class DeepSpeedEngine(Engine):
    """deepspeed.initialize over our model, optimizer and LR schedule."""

    def __init__(self, cfg, env: DistEnv, module, optimizer, scheduler):
        super().__init__(cfg, env, module)
        import warnings

        import deepspeed

        # DeepSpeed's ZeRO calls a collective torch has renamed, warning at every call
        warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*is deprecated", category=FutureWarning)
        from deepspeed.checkpoint.constants import (UNIVERSAL_CHECKPOINT_INFO, UNIVERSAL_CHECKPOINT_VERSION_KEY,
                                                    UNIVERSAL_CHECKPOINT_VERSION_VALUE)

        # recorded in every checkpoint so `ds_to_universal` can re-shard it for another world size
        setattr(module, UNIVERSAL_CHECKPOINT_INFO, {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE})
        self.ds_config = deepspeed_config(cfg, env.world_size)
        _forget_stale_deepspeed_groups()
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config,
            dist_init_required=not dist.is_initialized())
        self.module = self.model.module
        dtype = autocast_dtype(cfg.dist.precision)
        if dtype is not None:
            # DeepSpeed casts parameters but not buffers; batch norm wants its running statistics
            # in the parameters' dtype
            for m in self.module.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                    m.running_mean.data = m.running_mean.data.to(dtype)
                    m.running_var.data = m.running_var.data.to(dtype)

    def autocast(self):
        return contextlib.nullcontext()  # DeepSpeed casts the model itself under bf16/fp16

    def eval_context(self):
        if self.cfg.dist.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        # ZeRO-3 partitions parameters: gather them once, so evaluation runs plain local forwards
        # (ranks may evaluate different numbers of batches)
        return deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None)

    @property
    def loss_scaled(self) -> bool:
        return bool(self.ds_config.get("fp16", {}).get("enabled"))  # DeepSpeed's dynamic loss scaler

    def _local_weights(self):
        """Under ZeRO-3 a parameter holds only this rank's partition (``ds_tensor``)."""
        for name, p in self.module.named_parameters():
            yield name, getattr(p, "ds_tensor", p)
        yield from self.module.named_buffers()

    def _sharded(self) -> bool:
        return self.cfg.dist.zero_stage == 3

    def backward_step(self, loss):
        boundary = self.model.is_gradient_accumulation_boundary()  # (asked before step() moves on)
        self.model.backward(loss)  # scales by 1/grad_accum itself
        self.model.step()  # steps optimizer and LR schedule at accumulation boundaries
        # DeepSpeed's fp16 optimizer skips a step with overflowing gradients (a host bool it read itself)
        return (not self.model.was_step_applied()) if boundary else None

    @property
    def lr(self):
        return self.model.get_lr()[0]

    def save(self, directory, epoch, step_in_epoch, client_state):
        directory = Path(directory)
        tag = ckpt.deepspeed_tag(epoch, step_in_epoch)
        last = ckpt.find_latest(directory)
        error = None
        try:  # DeepSpeed writes with torch.save(path): a full disk shows as OSError or RuntimeError
            self.model.save_checkpoint(str(directory), tag=tag, save_latest=False,
                                       client_state={"epoch": epoch, "step_in_epoch": step_in_epoch, **client_state})
        except (OSError, RuntimeError) as e:
            error = str(ckpt.write_failed(directory / tag, e, last))
        error = _agree_on_error(self.env, error)
        if not error:
            consolidated = gather_consolidated(self)  # collective: every rank takes part
            if self.env.rank == 0:
                try:
                    ckpt.write_torch(consolidated, directory / tag / CONSOLIDATED)
                    # only complete on every rank now (DeepSpeed's writes are done): mark it atomically
                    atomic_write_text(directory / tag / ckpt.COMPLETE, f"{epoch} {step_in_epoch}\n")
                except OSError as e:
                    error = str(ckpt.write_failed(directory / tag, e, last))
            error = _agree_on_error(self.env, error, src=0)
        if error:
            if self.env.rank == 0:  # never marked COMPLETE, so never loaded; remove what was written
                shutil.rmtree(directory / tag, ignore_errors=True)
            self.env.barrier()
            raise ckpt.CheckpointError(error)
        if self.env.rank == 0:
            for old in ckpt.list_deepspeed_checkpoints(directory)[:-self.cfg.keep_checkpoints]:
                (old / ckpt.COMPLETE).unlink()  # unmark first: a crash mid-delete leaves no loadable half
                shutil.rmtree(old, ignore_errors=True)
        self.env.barrier()

    def load(self, path):
        path = Path(path)
        client = ckpt.deepspeed_client_state(path)  # checks the COMPLETE marker; weights_only read
        saved_world = int(client.get("world_size") or client.get("dp_world_size") or self.env.world_size)
        if saved_world != self.env.world_size and self.cfg.dist.zero_stage > 0:
            return self._refuse_nonfinite(load_consolidated(self, path, client, saved_world), path)
        try:
            with ckpt.weights_only_torch_load():
                _, client_state = self.model.load_checkpoint(str(path.parent), tag=path.name)
        except ckpt.CheckpointError:
            raise
        except Exception as e:
            raise ckpt.CheckpointError(f"checkpoint {path}: DeepSpeed could not load it ({type(e).__name__}: "
                                       f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})") from None
        if client_state is None:
            raise ckpt.CheckpointError(f"checkpoint {path}: DeepSpeed could not load it")
        return self._refuse_nonfinite(client_state, path)

    def _refuse_nonfinite(self, client_state, path):
        """Collective: a loaded checkpoint whose weights are not finite (an older version's, of a run
        that diverged) is refused on every rank alike."""
        count, names = self.nonfinite_weights()
        if count:
            raise ckpt.CheckpointError(f"checkpoint {path}: its weights hold {count:,} non-finite values (nan/inf, "
                                       f"in {', '.join(names[:3])}); it was written by a run that diverged")
        return client_state

    @staticmethod
    def list_checkpoints(directory):
        return ckpt.list_deepspeed_checkpoints(Path(directory))


def build_engine(cfg, env: DistEnv, module: torch.nn.Module,
                 make_optimizer: Callable, make_scheduler: Callable) -> Engine:
    if cfg.dist.sync_bn and env.distributed:
        module = convert_sync_batchnorm(module, env.device)
    optimizer = make_optimizer(module)
    scheduler = make_scheduler(optimizer)
    if cfg.dist.engine == "deepspeed":
        return DeepSpeedEngine(cfg, env, module, optimizer, scheduler)
    return DDPEngine(cfg, env, module, optimizer, scheduler)
