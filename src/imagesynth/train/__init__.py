"""The shared training loop and its resumable checkpoints."""

from .loop import (Objective, ResumableBatchSampler, TrainConfig, TrainResult, learning_rate_at,
                   step_generator, train)

__all__ = ["Objective", "ResumableBatchSampler", "TrainConfig", "TrainResult",
           "learning_rate_at", "step_generator", "train"]
