"""The shared training loop and its resumable checkpoints."""

from .loop import (FamilyRunResult, Objective, ResumableBatchSampler, TrainConfig, TrainResult, learning_rate_at,
                   step_generator, train)

__all__ = ["FamilyRunResult", "Objective", "ResumableBatchSampler", "TrainConfig", "TrainResult",
           "learning_rate_at", "step_generator", "train"]
