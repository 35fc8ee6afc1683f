"""Process groups for data-parallel training: one process per GPU (NCCL) or per CPU worker (gloo).

Launchers set the environment: `torchrun` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; a SLURM job started by Hydra's submitit launcher with `tasks_per_node` > 1 runs one
task per GPU, and its ranks and master host are read from submitit's job environment. Without
either, training runs in one process and every helper here is a no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_type: str) -> Distributed:
    """Join the process group the launcher described (NCCL on CUDA, gloo on CPU), or run alone."""
    if "WORLD_SIZE" not in os.environ:
        _export_submitit_environment()
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        return Distributed()
    context = Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", 0)))
    if device_type == "cuda":
        torch.cuda.set_device(context.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return context


@contextlib.contextmanager
def main_first():
    """Run the block on rank 0 first (e.g. writing the dataset cache), then on the others."""
    if dist.is_initialized() and dist.get_rank() != 0:
        dist.barrier()
    try:
        yield
    finally:  # also when the block raises on rank 0: the others then run it, meet the same error and stop
        if dist.is_initialized() and dist.get_rank() == 0:
            dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _export_submitit_environment() -> None:
    """RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address for a multi-task submitit job."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    import submitit

    job = submitit.JobEnvironment()
    if job.num_tasks <= 1:
        return
    port = 20000 + int(hashlib.sha1(str(job.job_id).encode()).hexdigest(), 16) % 20000  # the same on every task
    os.environ.update(
        RANK=str(job.global_rank),
        WORLD_SIZE=str(job.num_tasks),
        LOCAL_RANK=str(job.local_rank),
        MASTER_ADDR=job.hostnames[0],
        MASTER_PORT=str(port),
    )


def sum_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The sum of `value` over all processes (differentiable through nothing; for counts)."""
    if not dist.is_initialized():
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    if not dist.is_initialized():
        return value
    return sum_over_processes(value) / dist.get_world_size()


def gather_to_main(items: list) -> list | None:
    """Concatenate every process's list on rank 0 (others get None)."""
    if not dist.is_initialized():
        return items
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(items, gathered, dst=0)
    return [item for part in gathered for item in part] if gathered is not None else None


def broadcast_from_main(value):
    """Rank 0's `value` on every process (any picklable object)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
