"""Distributed set-up in one function (torchrun env or SLURM), gloo on CPU and NCCL on GPU."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..utils import dist_info


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel when distributed; the model itself otherwise."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids)

    def shutdown(self) -> None:
        """Destroy the process group before the interpreter exits: a live gloo group's threads
        otherwise abort the process at exit ("terminate called without an active exception")."""
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier()


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda was asked for but no CUDA device is available")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_process_group(backend: str, rank: int, world: int) -> None:
    """init_process_group; under torchrun, on a store no earlier attempt has written to.

    Where rank 0's worker hosts the store (TORCHELASTIC_USE_AGENT_STORE=False: the launchers set
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for several nodes), every rendezvous round gives it a fresh
    port, so the store is new and no prefix is needed. This matters: a node started again has a
    restart count of 0 while the nodes that stayed count their restarts, so a prefix built from
    TORCHELASTIC_RESTART_COUNT would differ between them and the process group would never form
    (tests/train/test_node_restart.py).

    Where torchrun's agent hosts the store (one node, or the shared store left on), the store is
    kept across elastic restarts and a restarted rank could read a peer's address left by the
    previous (dead) attempt ("Connection refused"): there a prefix per attempt (the restart count,
    and the world size, as a restart because a node joined or left does not count as one) keeps
    every attempt's keys apart; all ranks of a node count alike there.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # not under torchrun: torch's own env:// rendezvous
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        return
    from datetime import timedelta

    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=not agent_hosts and rank == 0, timeout=timedelta(minutes=30))
    if agent_hosts:
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"cit_fast/attempt_{attempt}_world_{world}", store)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world)


def setup_distributed(device_name: str = "auto", engine: str = "ddp") -> DistEnv:
    """This process's rank, world and device (torchrun / SLURM environment), with the process group
    initialised when there are several processes (or DeepSpeed wants one)."""
    rank, world, local_rank = dist_info()
    device = pick_device(device_name, local_rank)
    deepspeed = engine == "deepspeed"
    if deepspeed and device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
    if deepspeed and world == 1 and not dist.is_initialized():
        # DeepSpeed always needs a process group; give a lone process a private one on loopback
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
            os.environ.setdefault(key, value)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    if world > 1 and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:  # SLURM without torchrun: the launcher sets these
            raise RuntimeError("distributed run without MASTER_ADDR/MASTER_PORT; launch with torchrun or launchers/")
        backend = "nccl" if device.type == "cuda" else "gloo"
        _init_process_group(backend, rank, world)
    return DistEnv(rank, world, local_rank, device)
