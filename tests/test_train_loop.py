"""The shared training loop: schedules, data order, and bit-exact resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from imagesynth.errors import ConfigError, NumericError
from imagesynth.train import ResumableBatchSampler, TrainConfig, learning_rate_at, train


class Pairs(torch.utils.data.Dataset):
    """A fixed regression set: y = A x + noise."""

    def __init__(self, n=40):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 6, generator=g)
        self.y = self.x @ torch.randn(6, 3, generator=g) + 0.1 * torch.randn(n, 3, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def objective(model, batch, generator):
    x, y = batch
    noise = 0.01 * torch.randn(x.shape, generator=generator)  # uses the per-step RNG
    loss = torch.nn.functional.mse_loss(model(x + noise), y)
    return loss, {"mse": loss.item()}


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))


CONFIG = dict(max_steps=20, batch_size=8, learning_rate=1e-2, warmup_steps=3,
              checkpoint_every=5, log_every=1, ema_decay=0.9, seed=3)


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def test_lr_schedule_warms_up_and_decays():
    config = TrainConfig(max_steps=100, warmup_steps=10, learning_rate=1.0, min_lr_ratio=0.1)
    assert learning_rate_at(config, 0) == pytest.approx(0.1)
    assert learning_rate_at(config, 9) == pytest.approx(1.0)
    assert learning_rate_at(config, 10) == pytest.approx(1.0)
    assert learning_rate_at(config, 100) == pytest.approx(0.1)


def test_batch_sampler_resumes_mid_epoch_and_covers_each_epoch():
    full = list(ResumableBatchSampler(10, 4, seed=0, start_step=0, max_steps=10))
    resumed = list(ResumableBatchSampler(10, 4, seed=0, start_step=3, max_steps=10))
    assert resumed == full[3:]
    flat = [i for batch in full for i in batch]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))


def test_resume_is_bit_exact(tmp_path):
    straight = train(make_model(), Pairs(), objective, TrainConfig(**CONFIG), tmp_path / "a",
                     show_progress=False)
    first = train(make_model(), Pairs(), objective, TrainConfig(**CONFIG), tmp_path / "b",
                  stop_after=7, show_progress=False)
    assert first.stopped == "time_budget" and first.step == 7
    model = make_model()
    second = train(model, Pairs(), objective, TrainConfig(**CONFIG), tmp_path / "b",
                   show_progress=False)
    assert second.step == 20 and second.stopped == "finished"
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    for p, q in zip(straight.ema.parameters(), second.ema.parameters()):
        assert torch.equal(p, q)
    assert losses(tmp_path / "a")[-1] < losses(tmp_path / "a")[0]


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_train_loop import CONFIG, Pairs, make_model, objective
    from imagesynth.train import TrainConfig, train

    def die(step, model, run_dir):
        if step == 12:
            os.kill(os.getpid(), signal.SIGKILL)  # a hard kill mid-run

    train(make_model(), Pairs(), objective, TrainConfig(**CONFIG, sample_every=1), {run!r},
          on_sample=die, show_progress=False)
""")


def assert_resuming_matches_an_uninterrupted_run(tmp_path, run_name):
    """Finish the run in tmp_path/run_name and compare it with a straight run."""
    resumed = train(make_model(), Pairs(), objective, TrainConfig(**CONFIG),
                    tmp_path / run_name, show_progress=False)
    straight = train(make_model(), Pairs(), objective, TrainConfig(**CONFIG), tmp_path / "ref",
                     show_progress=False)
    assert losses(tmp_path / run_name) == losses(tmp_path / "ref")
    for p, q in zip(resumed.ema.parameters(), straight.ema.parameters()):
        assert torch.equal(p, q)


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    script = KILLED_RUN.format(tests=os.path.dirname(__file__), run=str(tmp_path / "killed"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    done = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert done == ["step_00000005", "step_00000010"]
    assert_resuming_matches_an_uninterrupted_run(tmp_path, "killed")


INTERRUPTED_RUN = textwrap.dedent("""
    import os, signal, sys, json
    sys.path.insert(0, {tests!r})
    from test_train_loop import CONFIG, Pairs, make_model, objective
    from imagesynth.train import TrainConfig, train

    def interrupt(step, model, run_dir):
        if step == 12:
            os.kill(os.getpid(), signal.{signal})  # as Ctrl-C or a scheduler's TERM would

    result = train(make_model(), Pairs(), objective, TrainConfig(**CONFIG, sample_every=1),
                   {run!r}, on_sample=interrupt, show_progress=False)
    print(json.dumps({{"step": result.step, "stopped": result.stopped}}))
""")


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_interrupt_checkpoints_the_current_step_and_resumes_exactly(tmp_path, signal_name):
    script = INTERRUPTED_RUN.format(tests=os.path.dirname(__file__), signal=signal_name,
                                    run=str(tmp_path / "stopped"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {"step": 12, "stopped": "interrupted"}
    done = sorted(p.name for p in (tmp_path / "stopped" / "checkpoints").iterdir())
    assert done[-1] == "step_00000012"  # nothing after the last checkpoint is lost
    assert_resuming_matches_an_uninterrupted_run(tmp_path, "stopped")


def test_incomplete_newest_checkpoint_is_ignored(tmp_path):
    train(make_model(), Pairs(), objective, TrainConfig(**CONFIG), tmp_path / "r",
          stop_after=10, show_progress=False)
    (tmp_path / "r" / "checkpoints" / "step_00000010" / "COMPLETE").unlink()
    result = train(make_model(), Pairs(), objective, TrainConfig(**CONFIG), tmp_path / "r",
                   show_progress=False)
    straight = train(make_model(), Pairs(), objective, TrainConfig(**CONFIG), tmp_path / "s",
                     show_progress=False)
    assert result.step == 20 and losses(tmp_path / "r") == losses(tmp_path / "s")


def test_changed_settings_refuse_to_resume_and_bad_values_are_named(tmp_path):
    train(make_model(), Pairs(), objective, TrainConfig(**CONFIG), tmp_path / "r",
          stop_after=5, show_progress=False)
    with pytest.raises(ConfigError, match="different settings"):
        train(make_model(), Pairs(), objective, TrainConfig(**{**CONFIG, "learning_rate": 1.0}),
              tmp_path / "r", show_progress=False)
    with pytest.raises(ConfigError) as info:
        TrainConfig(max_steps=0)
    assert info.value.field == "max_steps"


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    def exploding(model, batch, generator):
        return model(batch[0]).sum() * float("inf"), {}

    with pytest.raises(NumericError, match="loss"):
        train(make_model(), Pairs(), exploding, TrainConfig(**CONFIG), tmp_path / "x",
              show_progress=False)
