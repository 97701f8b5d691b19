"""Data-parallel training under torchrun: process group, shards of each batch, gradient averaging.

`torchrun --nproc-per-node N -m imagesynth train ...` starts N copies of the same command and
tells each its place through RANK / WORLD_SIZE / LOCAL_RANK. Every process builds the same
model, sees the same global batches (the (seed, step) order of `ResumableBatchSampler`) and
keeps its own shard of each: with grad_accum A there are K = N * A shards per step, shard
k = m * N + rank holds every K-th sample of the global batch from position k (micro-batch m of
this rank). Strided rather than contiguous shards keep the GAN discriminator's minibatch-std
groups (samples j, j + B/4, ...) whole when 4 K divides the batch.

An objective marked `@shard_aware` draws its randomness through `BatchRandom`: the whole global
batch's draws, from the step's generator, of which a shard keeps its rows. Sample i's noise then
depends only on (seed, step, i), so N processes compute the same per-sample losses as one, and
the averaged gradient equals the single-process gradient up to float summation order.

Gradients are averaged by hand (flat all-reduce buckets after the last micro-batch) rather than
by wrapping the module in DistributedDataParallel: objectives call the model's methods
(`denoiser.loss`, `gan.generator`, `D` through `functional_call`), not its forward(), which
DDP's reducer needs to see, and one reduction per optimiser step needs no `no_sync` for
accumulation.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from ..errors import ConfigError, NumericError

#: elements per all-reduce bucket (64 MiB of fp32): bounds the extra memory of flattening
BUCKET_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun job; rank 0 of 1 when torchrun did not start it."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs, progress and model folders."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process trains together."""
        return self.size > 1


def world() -> World:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (a plain run is rank 0 of 1)."""
    if "WORLD_SIZE" not in os.environ:
        return World()
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        text = os.environ.get(name, "0")
        try:
            values[name] = int(text)
        except ValueError:
            raise ConfigError(f"must be an integer, got {text!r}", field=name,
                              fix="launch with torchrun, which sets it") from None
    if not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        raise ConfigError(f"rank {values['RANK']} outside a world of {values['WORLD_SIZE']}",
                          field="RANK", fix="launch with torchrun, which sets it")
    return World(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])


def is_main_process() -> bool:
    """Whether this process should write files and print (rank 0, or not under torchrun)."""
    return world().is_main


def device_for(place: World) -> torch.device:
    """CUDA when present (this process's GPU under torchrun), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if not place.distributed:
        return torch.device("cuda")
    if place.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"local rank {place.local_rank} but {torch.cuda.device_count()} GPUs",
                          field="nproc_per_node", fix="start at most one process per GPU")
    return torch.device("cuda", place.local_rank)


def setup(device: torch.device) -> World:
    """Join the torchrun job's process group once per process: NCCL on CUDA, gloo on CPU."""
    place = world()
    if not place.distributed or dist.is_initialized():
        return place
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Rendezvous comes from torchrun's MASTER_ADDR / MASTER_PORT (env://), single or multi node.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            rank=place.rank, world_size=place.size)
    atexit.register(teardown)  # also runs when the command ends with an error
    return place


def teardown() -> None:
    """Leave the process group (a no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_batch_split(batch_size: int, grad_accum: int, world_size: int | None = None) -> None:
    """The global batch must split into equal shards: one per process and accumulation step."""
    size = world().size if world_size is None else world_size
    shards = size * grad_accum
    if batch_size % shards:
        raise ConfigError(f"{batch_size} does not split evenly over {size} process(es) x "
                          f"{grad_accum} accumulation step(s)", field="batch_size",
                          fix=f"use a multiple of {shards}, or change --nproc-per-node / "
                              f"--grad-accum")


class ShardedBatchSampler(torch.utils.data.Sampler):
    """This process's micro-batches of each global batch: shards m * N + rank, m < grad_accum."""

    def __init__(self, batches: torch.utils.data.Sampler, place: World, grad_accum: int):
        self.batches, self.place, self.grad_accum = batches, place, grad_accum

    def __iter__(self) -> Iterator[list[int]]:
        shards = self.place.size * self.grad_accum
        for batch in self.batches:
            for micro in range(self.grad_accum):
                yield batch[micro * self.place.size + self.place.rank::shards]

    def __len__(self) -> int:
        return len(self.batches) * self.grad_accum


def shard_aware(call: Callable) -> Callable:
    """Mark an objective (or its __call__) whose random draws go through `BatchRandom`."""
    call.shard_aware = True
    return call


def is_shard_aware(objective) -> bool:
    """Whether `objective` promises per-sample noise that does not depend on the sharding."""
    return bool(getattr(objective, "shard_aware", False)
                or getattr(getattr(type(objective), "__call__", None), "shard_aware", False))


@dataclass(frozen=True)
class BatchRandom:
    """One step's random draws made for the whole global batch; this shard keeps its rows.

    With one shard it draws exactly what the plain generator would (same calls, same order), so
    a single-process run is unchanged. Draws not tied to samples (one coin for the whole step)
    use `generator` directly: every shard makes the same draws in the same order, so they agree.
    """

    generator: torch.Generator
    batch_size: int
    shard: int = 0
    shards: int = 1

    @classmethod
    def of(cls, source: "torch.Generator | BatchRandom", batch_size: int) -> "BatchRandom":
        """`source` itself, or a plain generator as the one shard of a `batch_size` batch."""
        return source if isinstance(source, BatchRandom) else cls(source, batch_size)

    def rows(self, full: torch.Tensor) -> torch.Tensor:
        """This shard's rows of a [global batch, ...] tensor."""
        return full if self.shards == 1 else full[self.shard::self.shards]

    def draw(self, sample: Callable[[torch.Generator, int], torch.Tensor]) -> torch.Tensor:
        """`sample(generator, global_batch)` -> [global batch, ...], this shard's rows."""
        return self.rows(sample(self.generator, self.batch_size))

    def rand(self, *shape: int, device: torch.device | str | None = None) -> torch.Tensor:
        """U[0, 1) of shape [shard batch, *shape]."""
        return self.rows(torch.rand(self.batch_size, *shape, generator=self.generator,
                                    device=device))

    def randn(self, *shape: int, device: torch.device | str | None = None) -> torch.Tensor:
        """N(0, 1) of shape [shard batch, *shape]."""
        return self.rows(torch.randn(self.batch_size, *shape, generator=self.generator,
                                     device=device))


def shard_generator(seed: int, step: int, shard: int, device: torch.device) -> torch.Generator:
    """Independent noise per shard, for objectives that are not shard-aware."""
    generator = torch.Generator(device=device)
    generator.manual_seed(((seed * 1_000_003 + step) * 65_537 + shard + 1) % (2**63))
    return generator


def sum_across(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all processes (float64, one all-reduce)."""
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def agree_on_start(step: int, device: torch.device) -> None:
    """Every process must resume from the same checkpoint (a run folder all of them see)."""
    low, high = torch.tensor([step], device=device), torch.tensor([step], device=device)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if low.item() != high.item():
        raise ConfigError(f"processes found checkpoints of steps {low.item()} to {high.item()}",
                          field="run_dir", fix="put the run folder on storage every node "
                                               "shares (rank 0 writes the checkpoints)")


@torch.no_grad()
def broadcast_state(modules: Sequence[torch.nn.Module | None]) -> None:
    """Copy rank 0's parameters and buffers to every process (as DDP does when it wraps)."""
    for module in modules:
        if module is None:
            continue
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def _buckets(tensors: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Consecutive groups of one dtype and device, each at most BUCKET_ELEMENTS (or one tensor)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        same_kind = not bucket or (tensor.dtype, tensor.device) == (bucket[0].dtype,
                                                                    bucket[0].device)
        if bucket and (not same_kind or size + tensor.numel() > BUCKET_ELEMENTS):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += tensor.numel()
    if bucket:
        yield bucket


@torch.no_grad()
def average_gradients(params: Sequence[torch.nn.Parameter], world_size: int) -> None:
    """Replace every gradient by its mean over the processes (flat all-reduce per bucket)."""
    grads = [p.grad for p in params if p.grad is not None]
    for bucket in _buckets(grads):
        flat = torch._utils._flatten_dense_tensors(bucket)
        dist.all_reduce(flat)
        flat.div_(world_size)
        for grad, synced in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
            grad.copy_(synced)


def barrier(device: torch.device) -> None:
    """Wait for every process (rank 0's checkpoint is complete when this returns)."""
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index if device.index is not None
                                 else torch.cuda.current_device()])
    else:
        dist.barrier()


def average_metrics(loss: float, metrics: dict[str, float], params: Sequence[torch.nn.Parameter],
                    place: World, device: torch.device) -> tuple[float, dict[str, float]]:
    """Mean loss and metrics over the processes; check they all have the same gradients set."""
    keys = sorted(metrics)
    with_grad = sum(p.grad is not None for p in params)
    totals = sum_across([loss, *(metrics[k] for k in keys), with_grad], device)
    if totals[-1] != with_grad * place.size:
        raise NumericError("processes computed gradients for different parameters",
                           field="objective", fix="make the objective use the same parameters "
                                                  "whatever its shard of the batch")
    return totals[0] / place.size, {k: v / place.size for k, v in zip(keys, totals[1:-1])}
