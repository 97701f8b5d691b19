"""The shared training loop and its resumable checkpoints (data-parallel under torchrun)."""

from .distributed import BatchRandom, is_main_process, shard_aware
from .loop import (FamilyRunResult, Objective, ResumableBatchSampler, TrainConfig, TrainResult,
                   learning_rate_at, step_generator, train)

__all__ = ["BatchRandom", "FamilyRunResult", "Objective", "ResumableBatchSampler", "TrainConfig",
           "TrainResult", "is_main_process", "learning_rate_at", "shard_aware", "step_generator",
           "train"]
