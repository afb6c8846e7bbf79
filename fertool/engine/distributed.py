"""Data-parallel training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m fertool train ...`` starts N copies of the command with
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set; :func:`setup` turns that environment into a
process group (NCCL on GPUs, gloo on CPU) and a :class:`DistContext`.  Without those
variables everything here is a no-op for a single process, so the engine has one code path.

Only rank 0 writes files; metrics are summed over ranks with :meth:`DistContext.all_reduce`,
and decisions (early stopping, a non-finite loss) are taken from rank 0's values with
:meth:`DistContext.broadcast_flag`, so every rank stops at the same step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import TrainingError
from ..utils import resolve_device

__all__ = ["DistContext", "setup", "env_world_size"]


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


@dataclass
class DistContext:
    """Where this process stands: its rank, the number of ranks and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False  # True when setup() created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks (in place on a copy on the comm device); returns it on CPU."""
        if not self.distributed:
            return tensor
        t = tensor.detach().to(self.comm_device, copy=True)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu()

    def average_buffers(self, model: torch.nn.Module) -> None:
        """Average floating-point buffers (BatchNorm moving statistics) over ranks, in place.

        DDP keeps parameters in step but each rank's BatchNorm statistics see only its own
        batches; averaging them (as timm's ``distribute_bn`` does) gives every rank the
        same model for validation and for the checkpoint.
        """
        if not self.distributed:
            return
        with torch.no_grad():
            for buf in model.buffers():
                if buf.is_floating_point():
                    t = buf.detach().to(self.comm_device, copy=True)
                    dist.all_reduce(t, op=dist.ReduceOp.SUM)
                    buf.copy_(t.to(buf.device) / self.world_size)

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank."""
        if not self.distributed:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.comm_device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def any_flag(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (e.g. a non-finite loss)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def all_gather_object(self, obj: Any) -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if not self.distributed:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @property
    def comm_device(self) -> torch.device:
        """NCCL reduces CUDA tensors only; gloo CPU tensors."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup(device: str = "auto") -> DistContext:
    """A :class:`DistContext` for this process; initialises the process group under torchrun.

    ``device``: ``auto`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU;
    under torchrun with CUDA each rank takes the GPU of its local rank.
    """
    world = env_world_size()
    if world <= 1:
        return DistContext(device=resolve_device(device))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    base = resolve_device(device)
    if base.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(
                f"torchrun: local rank {local_rank} has no GPU (this machine has {torch.cuda.device_count()}); "
                "use --nproc_per_node <= the number of GPUs or --device cpu"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
        owns = True
    elif dist.get_backend() != backend:
        backend = dist.get_backend()
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend, owns_group=owns)
