"""Multi-process training and evaluation with ``torchrun`` (DistributedDataParallel).

    torchrun --nproc_per_node 8 train_gsem.py --classifier_name GSeMResNet18 --dataset_name cifar10

Without torchrun (no WORLD_SIZE in the environment) everything here is a no-op and the scripts run in one process.
The global batch size and learning rate stay as given: each of the N processes takes batch_size / N images.
Rank 0 alone logs, shows progress bars and writes checkpoints; evaluation shards the test set over the ranks
(contiguous blocks, no padding) and sums the counts.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init(device_type: str) -> None:
    """Join the process group when launched by torchrun (nccl on CUDA, gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """cuda:LOCAL_RANK for a CUDA run under torchrun, else ``device``."""
    if device.type == "cuda" and dist.is_initialized():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return device


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (identity in one process)."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a (CPU) tensor from every rank, in rank order."""
    if not dist.is_initialized():
        return t
    parts = [None] * world_size()
    dist.all_gather_object(parts, t)
    return torch.cat(parts)


def shard(n: int) -> range:
    """This rank's contiguous block of ``range(n)``."""
    r, w = rank(), world_size()
    return range(n * r // w, n * (r + 1) // w)


def wrap(model: torch.nn.Module, device: torch.device, sync_bn: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when distributed (buffers broadcast from rank 0 at every forward, so
    several forwards before one backward, as in MART and AWP, see the same BatchNorm statistics on every rank);
    optionally with SyncBatchNorm. Returns ``model`` itself in one process."""
    if not dist.is_initialized():
        return model
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)  # buffers broadcast by default


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP (or torch.compile) wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model
