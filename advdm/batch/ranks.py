"""This process's place in a sharded run: alone, or one rank of a torchrun launch.

torchrun (torch.distributed.run) starts one process per device, on one or several machines,
and sets RANK, WORLD_SIZE and LOCAL_RANK; we read those and use torch.distributed's
collectives to agree on the plan and to count the results. There is no scheduler here: the
work list is sorted, and rank r does every world-th item of it starting at r.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch

from ..models.checkpoints import CheckpointError, pick_device

# Ranks wait at the end for the slowest one, which may be hours behind on a large uneven
# batch; a rank that dies is torchrun's business (it stops the others), not this timeout's.
WAIT = timedelta(days=1)


class Ranks:
    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0):
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @classmethod
    def from_env(cls) -> "Ranks":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        import torch.distributed as dist

        # gloo even on GPUs: only small Python objects (hashes, counts) are exchanged, and gloo
        # needs no device pinned per rank, unlike NCCL
        dist.init_process_group("gloo", timeout=WAIT)
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def label(self) -> str:
        """"[rank 1/4] " in a sharded run, for its progress and messages; nothing when alone."""
        return f"[rank {self.rank}/{self.world}] " if self.world > 1 else ""

    def share(self, items: list) -> list:
        return items[self.rank :: self.world]

    def gather(self, mine) -> list:
        """Every rank's `mine`, in rank order, on every rank."""
        if self.world == 1:
            return [mine]
        import torch.distributed as dist

        everyone = [None] * self.world
        dist.all_gather_object(everyone, mine)
        return everyone

    def map_shared(self, function, items: list) -> list:
        """[function(item) for item in items] on every rank, each rank computing only its share."""
        results = [None] * len(items)
        for rank, share in enumerate(self.gather([function(item) for item in self.share(items)])):
            results[rank :: self.world] = share
        return results

    def from_rank0(self, value):
        """Rank 0's value, on every rank (one rank decides, so all agree by construction)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def device(self, name: str) -> torch.device:
        """The device asked for; under torchrun CUDA is cuda:LOCAL_RANK, one GPU per rank."""
        device = pick_device(name)
        if device.type != "cuda" or self.world == 1:
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise CheckpointError(f"rank {self.rank}: local rank {self.local_rank} but only "
                                  f"{torch.cuda.device_count()} CUDA devices; start at most that many per machine")
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def close(self, finished: bool) -> None:
        """Leave the group. After a finished run every rank first waits for the others, so each
        rank's gloo worker threads are done with the last collective before any rank tears its
        group down; after an error or an interrupt a rank leaves at once (the others may never
        reach a barrier)."""
        if self.world > 1:
            import torch.distributed as dist

            if finished:
                dist.barrier()
            dist.destroy_process_group()
