"""Sharding work across processes started by `torchrun` (any mix of GPUs and nodes; gloo on CPU).

    with process_shard() as shard:          # rank 0 of 1 without torchrun
        mine = shard.take(items)            # items[rank::world_size]
        everything = shard.gather(results)  # rank 0: one list per rank; other ranks: None

A script can start itself under torchrun (`relaunch_with_torchrun`, behind a `--procs N` flag).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NoReturn, Sequence, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    rank: int
    world_size: int
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, index: int) -> bool:
        return index % self.world_size == self.rank

    def take(self, items: Sequence[T]) -> list[T]:
        return list(items[self.rank :: self.world_size])

    def gather(self, obj: Any) -> list[Any] | None:
        """Rank 0 gets every rank's `obj` in rank order; the others get None."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        """Wait until every rank is here (nothing to wait for in one process)."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def device(self, device: str) -> str:
        """Under torchrun with CUDA, "auto"/"cuda" mean this process's GPU (cuda:LOCAL_RANK)."""
        if self.world_size > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return device


@contextmanager
def process_shard() -> Iterator[Shard]:
    """A process group when started by torchrun (WORLD_SIZE > 1: nccl with CUDA, else gloo), torn down on exit."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield Shard(0, 1)
        return
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    try:
        yield Shard(dist.get_rank(), dist.get_world_size(), local_rank)
    finally:
        dist.destroy_process_group()


def started_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ


def relaunch_with_torchrun(script: str | Path, argv: Sequence[str], procs: int) -> NoReturn:
    """Replace this process by `torchrun --standalone --nproc-per-node procs script argv` (on this machine only).
    Each process gets one intra-op thread unless OMP_NUM_THREADS is set: on a CPU with few cores, single-threaded
    processes do more work together than one multi-threaded process, whose small matrix products parallelise poorly."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
               str(script), *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, env)
