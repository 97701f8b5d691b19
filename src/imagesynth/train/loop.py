"""The one training loop every model family uses.

It owns what families share: data order, optimiser, LR schedule, EMA, gradient clipping,
autocast, checkpoints with bit-exact resume, JSONL logs, Rich progress and a time budget.
A family supplies only an `Objective`: `(model, batch, generator) -> (loss, metrics)`.

Resume is exact because nothing depends on hidden RNG state: the data order of epoch `e` is
a permutation drawn from `seed` and `e`, and the objective's generator for step `t` is seeded
from `seed` and `t`; model, EMA and optimizer tensors are restored bit for bit.

Under torchrun the same loop trains data-parallel (`distributed.py`): each process takes its
shards of the same global batch, gradients are averaged before the optimiser step, and rank 0
alone writes checkpoints, logs and progress. Nothing in a checkpoint depends on the number of
processes, so a run may resume with another one.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Protocol, Sequence

import torch
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from ..config import from_dict, to_dict
from ..errors import ConfigError, NumericError
from ..io.files import atomic_write_text
from . import distributed
from .distributed import BatchRandom, World, is_shard_aware
from .state import checkpoint_dirs, load_checkpoint, save_checkpoint


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a run; saved beside the checkpoints and compared on resume."""

    max_steps: int
    batch_size: int = 64
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    decay: Literal["constant", "cosine", "linear"] = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every: int | None = None
    eval_every: int | None = None
    seed: int = 0
    max_minutes: float | None = None
    num_workers: int = 0
    #: micro-batches per optimiser step and process: batch_size stays the global batch, so
    #: memory per process falls with it while the maths stays that of the whole batch
    grad_accum: int = 1

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "checkpoint_every", "log_every", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError("must be at least 1", field=name)
        if self.learning_rate <= 0:
            raise ConfigError("must be positive", field="learning_rate")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("must be in [0, 1)", field="ema_decay")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError("must be positive", field="max_minutes")


class Objective(Protocol):
    """A family's loss: called once per step with a generator seeded for that step.

    Its loss must be the mean over the batch's samples. In a sharded step (several processes
    or grad_accum > 1) a `@shard_aware` objective gets a `BatchRandom` instead of the generator;
    any other gets an independent generator per shard.
    """

    def __call__(self, model: torch.nn.Module, batch: Any,
                 generator: torch.Generator | BatchRandom
                 ) -> tuple[torch.Tensor, dict[str, float]]: ...


def learning_rate_at(config: TrainConfig, step: int) -> float:
    """LR at `step`: linear warm-up, then constant, cosine or linear decay to min_lr_ratio."""
    base = config.learning_rate
    if step < config.warmup_steps:
        return base * (step + 1) / config.warmup_steps
    if config.decay == "constant":
        return base
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, progress)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if config.decay == "cosine" else 1 - progress
    return base * (config.min_lr_ratio + (1 - config.min_lr_ratio) * shape)


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The objective's RNG for one step, a pure function of (seed, step)."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + step) % (2**63))
    return generator


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Yields index batches for steps `start_step` onward; epoch order depends only on the seed."""

    def __init__(self, dataset_size: int, batch_size: int, seed: int, start_step: int,
                 max_steps: int):
        if dataset_size < 1:
            raise ConfigError("the training set is empty", field="data",
                              fix="point --data at a folder with images and captions")
        self.size, self.batch_size, self.seed = dataset_size, batch_size, seed
        self.start_step, self.max_steps = start_step, max_steps

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        # Batches run across epoch boundaries so every step has a full batch.
        position = self.start_step * self.batch_size
        epoch, offset = divmod(position, self.size)
        order = self._epoch_order(epoch)
        for _ in range(self.start_step, self.max_steps):
            batch = []
            while len(batch) < self.batch_size:
                if offset == self.size:
                    epoch, offset = epoch + 1, 0
                    order = self._epoch_order(epoch)
                take = min(self.batch_size - len(batch), self.size - offset)
                batch.extend(order[offset:offset + take].tolist())
                offset += take
            yield batch

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step)


def default_device() -> torch.device:
    """CUDA when present (an accelerator, never a requirement; this process's GPU under
    torchrun), else CPU."""
    return distributed.device_for(distributed.world())


@dataclass
class TrainResult:
    """What a run did: the step reached, why it stopped, and the last logged metrics."""

    step: int
    stopped: Literal["finished", "time_budget", "interrupted"]
    run_dir: Path
    last_metrics: dict[str, float]
    ema: torch.nn.Module | None


@dataclass(frozen=True)
class FamilyRunResult:
    """What a family's training function produced: the model folder and how the run ended.

    `metrics` is the final evaluation, or the last logged metrics for a family without one.
    """

    model_dir: Path
    steps: int
    stopped: str
    metrics: dict
    seconds: float


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_params = [p for p in ema.parameters()]
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def train(model: torch.nn.Module, dataset: Sequence, objective: Objective, config: TrainConfig,
          run_dir: str | Path, *, collate: Callable | None = None, resume: bool = True,
          device: torch.device | None = None,
          on_sample: Callable[[int, torch.nn.Module, Path], None] | None = None,
          on_eval: Callable[[int, torch.nn.Module], dict[str, float]] | None = None,
          stop_after: int | None = None, show_progress: bool = True) -> TrainResult:
    """Train `model` on `dataset` with `objective`; resume from `run_dir` when it has a checkpoint.

    `on_sample(step, ema_or_model, run_dir)` writes sample grids; `on_eval(step, ema_or_model)`
    returns validation metrics that are logged. `stop_after` ends the run early after that
    many steps in this call (a checkpoint is written), as a time budget would. Ctrl-C or
    SIGTERM also checkpoint after the current step and return with `stopped="interrupted"`.
    Under torchrun every process calls this alike; hooks, logs and checkpoints run on rank 0.
    """
    run_dir = Path(run_dir)
    distributed.check_batch_split(config.batch_size, config.grad_accum)
    device = device or default_device()
    if config.precision == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 training needs a CUDA device", field="precision",
                          fix="use bf16 or fp32 on CPU")
    place = distributed.setup(device)
    main, shards = place.is_main, place.size * config.grad_accum
    model = model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval() if config.ema_decay else None
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters", field="model")
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=config.betas,
                                  weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
    checkpoints = run_dir / "checkpoints"
    config_json = json.dumps(to_dict(config), sort_keys=True)

    start_step = 0
    complete = checkpoint_dirs(checkpoints)
    if complete and not resume:
        raise ConfigError(f"{run_dir} already holds a run (checkpoint {complete[-1].name})",
                          field="run_dir", fix="choose a new output folder, or resume this run")
    if complete:
        saved = json.loads((run_dir / "train_config.json").read_text())
        if _resume_relevant(saved) != _resume_relevant(json.loads(config_json)):
            raise ConfigError("the run folder holds a run with different settings",
                              field="run_dir", fix="use a new --out folder, or the same settings")
        start_step = load_checkpoint(complete[-1], model, ema, optimizer)["step"]
    if place.distributed:
        distributed.agree_on_start(start_step, device)
        distributed.broadcast_state([model, ema])
    log_path = run_dir / "log.jsonl"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "train_config.json", config_json)
        _truncate_log(log_path, start_step)

    sampler = ResumableBatchSampler(len(dataset), config.batch_size, config.seed, start_step,
                                    config.max_steps)
    if shards > 1:
        sampler = distributed.ShardedBatchSampler(sampler, place, config.grad_accum)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=config.num_workers)
    deadline = time.monotonic() + 60 * config.max_minutes if config.max_minutes else None
    step, stopped, last = start_step, "finished", {}
    window_start, window_images = time.perf_counter(), 0

    def checkpoint() -> None:
        if main:
            save_checkpoint(checkpoints, step, model, ema, optimizer,
                            {"config": json.loads(config_json), "world_size": place.size},
                            config.keep_checkpoints)
        if place.distributed:
            distributed.barrier(device)

    progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                        TimeRemainingColumn(), disable=not (show_progress and main))
    log_file = log_path.open("a") if main else open(os.devnull, "w")
    with progress, log_file as log, _StopRequests() as stop_requests:
        task = progress.add_task("train", total=config.max_steps, completed=start_step,
                                 status="")
        for micro_batches in _steps(loader, config.grad_accum):
            model.train()
            lr = learning_rate_at(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss, metrics = _accumulate(model, objective, micro_batches, config, step, place,
                                        device, scaler)
            if place.distributed:
                loss, metrics = distributed.average_metrics(loss, metrics, params, place, device)
            if not math.isfinite(loss):
                checkpoint_hint = complete[-1].name if complete else "none yet"
                raise NumericError(f"loss became {loss} at step {step}", field="loss",
                                   fix=f"lower --lr or use fp32; last checkpoint: {checkpoint_hint}")
            if place.distributed:
                distributed.average_gradients(params, place.size)
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = (torch.nn.utils.clip_grad_norm_(params, config.grad_clip).item()
                         if config.grad_clip else float("nan"))
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if ema is not None:
                # EMA warm-up: early weights are noise, so average over a shorter horizon first.
                _update_ema(ema, model, min(config.ema_decay, (1 + step) / (10 + step)))
            step += 1
            window_images += config.batch_size
            progress.update(task, completed=step, status=f"loss {loss:.4f}")

            if step % config.log_every == 0 or step == config.max_steps:
                elapsed = time.perf_counter() - window_start
                last = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                        "images_per_second": window_images / max(elapsed, 1e-9), **metrics}
                log.write(json.dumps(last) + "\n")
                log.flush()
                window_start, window_images = time.perf_counter(), 0
            if main and on_eval and config.eval_every and step % config.eval_every == 0:
                results = on_eval(step, ema if ema is not None else model)
                log.write(json.dumps({"step": step, "eval": results}) + "\n")
                log.flush()
            if main and on_sample and config.sample_every and step % config.sample_every == 0:
                on_sample(step, ema if ema is not None else model, run_dir)
            out_of_time = deadline is not None and time.monotonic() > deadline
            stop_now = stop_after is not None and step - start_step >= stop_after
            interrupted = stop_requests.requested is not None
            if place.distributed:  # one process's clock or signal stops all of them together
                out_of_time, interrupted = (value > 0 for value in distributed.sum_across(
                    [out_of_time, interrupted], device))
            if step % config.checkpoint_every == 0 or step == config.max_steps or \
                    out_of_time or stop_now or interrupted:
                checkpoint()
            if interrupted and step < config.max_steps:
                stopped = "interrupted"
                break
            if out_of_time or stop_now:
                stopped = "time_budget"
                break
    return TrainResult(step, stopped, run_dir, last, ema)


def _steps(loader: Iterable, grad_accum: int) -> Iterator[list[Any]]:
    """Group the loader's micro-batches into optimiser steps."""
    batches = iter(loader)
    while micro_batches := list(itertools.islice(batches, grad_accum)):
        yield micro_batches


def _accumulate(model: torch.nn.Module, objective: Objective, micro_batches: list[Any],
                config: TrainConfig, step: int, place: World, device: torch.device,
                scaler) -> tuple[float, dict[str, float]]:
    """Backward every micro-batch of this process; return the mean loss and metrics."""
    accum = len(micro_batches)
    total, metrics_sum = None, {}
    for micro, batch in enumerate(micro_batches):
        batch = _to_device(batch, device)
        randomness = _step_random(objective, config, step, micro * place.size + place.rank,
                                  place.size * config.grad_accum, device)
        with _autocast(config.precision, device):
            loss, metrics = objective(model, batch, randomness)
        if accum > 1:  # each micro-batch's mean loss weighs 1/accum of the step's mean
            loss = loss / accum
            metrics = {key: value / accum for key, value in metrics.items()}
        (scaler.scale(loss) if scaler else loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
        metrics_sum = metrics if not metrics_sum else {
            key: metrics_sum[key] + value for key, value in metrics.items()}
    return total.item(), metrics_sum


def _step_random(objective: Objective, config: TrainConfig, step: int, shard: int, shards: int,
                 device: torch.device) -> torch.Generator | BatchRandom:
    """The objective's randomness for one shard of step `step` (the plain generator unsharded)."""
    if shards == 1:
        return step_generator(config.seed, step, device)
    if is_shard_aware(objective):
        return BatchRandom(step_generator(config.seed, step, device), config.batch_size, shard,
                           shards)
    return distributed.shard_generator(config.seed, step, shard, device)


class _StopRequests:
    """Ctrl-C / SIGTERM ask the loop to checkpoint after the current step and stop.

    A second Ctrl-C interrupts at once (losing only the steps since the last checkpoint).
    Handlers are installed only in the main thread, where Python allows it.
    """

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequests":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# Settings that may change between a run and its resumption without changing the maths.
# grad_accum and the number of processes only change float summation order.
_RESUME_FREE = {"max_minutes", "checkpoint_every", "keep_checkpoints", "log_every",
                "sample_every", "eval_every", "num_workers", "max_steps", "grad_accum"}


def _resume_relevant(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _RESUME_FREE}


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the resumed step so the log matches an uninterrupted run."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _to_device(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def train_config_from(data: dict) -> TrainConfig:
    """Build a TrainConfig from a dict with field-level errors."""
    return from_dict(TrainConfig, data)
