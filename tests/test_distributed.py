"""Data-parallel training under torchrun (gloo on the CPU): the same run as one process, resumable
across world sizes, with the batch split checked up front.

"Equal" here means float tolerance: every loss within 1e-5 of the single-process loss (relative),
and every weight tensor within 1e-5 in relative L2 norm (||a - b|| <= 1e-5 ||a||); processes sum
gradients in another order than one process does, so bit equality is not expected.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from imagesynth.cli import run as cli
from imagesynth.families.diffusion import DiffusionObjective, train_diffusion
from imagesynth.families.flow import FlowObjective
from imagesynth.families.gan import GANObjective
from imagesynth.families.instruct import InstructObjective
from imagesynth.io.checkpoint import load_weights
from imagesynth.train import BatchRandom, ResumableBatchSampler
from imagesynth.train.distributed import ShardedBatchSampler, World, is_shard_aware

TOLERANCE = 1e-5
#: the loop settings of the kill/resume runs: a checkpoint every 4 steps, every loss logged
RESUMABLE = dict(max_steps=20, batch_size=8, checkpoint_every=4, log_every=1, seed=0)


def torchrun(nproc: int, *command: str) -> list[str]:
    """argv that starts `command` in `nproc` local processes (rendezvous on a free port)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", *command]


def environment() -> dict[str, str]:
    # One thread a process: the machine has two cores for both processes.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def log(run) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def assert_close_losses(run, reference) -> None:
    got, want = log(run), log(reference)
    assert [e["step"] for e in got] == [e["step"] for e in want]
    assert [e["lr"] for e in got] == [e["lr"] for e in want]  # the same schedule
    for a, b in zip(got, want):
        assert abs(a["loss"] - b["loss"]) <= TOLERANCE * abs(b["loss"]), (a, b)


def assert_close_weights(path, reference_path) -> None:
    got, want = load_weights(path), load_weights(reference_path)
    assert got.keys() == want.keys()
    for key in want:
        a, b = got[key].double(), want[key].double()
        assert (a - b).norm() <= TOLERANCE * b.norm() + 1e-12, key


def test_shards_of_a_batch_and_of_its_draws_rebuild_the_whole():
    whole = list(ResumableBatchSampler(10, 8, seed=0, start_step=0, max_steps=3))
    shards = {rank: list(ShardedBatchSampler(ResumableBatchSampler(10, 8, 0, 0, 3),
                                             World(rank, 2), grad_accum=2)) for rank in (0, 1)}
    for step, batch in enumerate(whole):
        # shard k = micro * world + rank holds every 4th sample from position k
        pieces = {micro * 2 + rank: shards[rank][step * 2 + micro]
                  for rank in (0, 1) for micro in (0, 1)}
        assert all(pieces[k] == batch[k::4] for k in range(4))
    full = torch.randn(8, 3, generator=torch.Generator().manual_seed(5))
    drawn = [BatchRandom(torch.Generator().manual_seed(5), 8, k, 4).randn(3) for k in range(4)]
    assert all(torch.equal(drawn[k], full[k::4]) for k in range(4))
    # one shard draws exactly what the plain generator draws
    alone = BatchRandom.of(torch.Generator().manual_seed(5), 8)
    assert torch.equal(alone.randn(3), full)


def test_objectives_that_draw_per_sample_are_marked_shard_aware():
    assert is_shard_aware(DiffusionObjective(None, 0.1, latent=False))
    assert is_shard_aware(GANObjective(torch.zeros(0), None))
    assert is_shard_aware(FlowObjective())
    # overrides __call__ with plain generator draws: gets independent noise per shard instead
    assert not is_shard_aware(InstructObjective.__new__(InstructObjective))


def test_a_batch_the_world_cannot_split_is_refused_naming_the_field(shapes_folder, tmp_path,
                                                                    monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code = cli(["train", "diffusion", "--data", str(shapes_folder(24)), "--out",
                str(tmp_path / "run"), "--preset", "tiny", "--batch-size", "7"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: batch_size: 7 does not split evenly")
    assert "--nproc-per-node" in lines[0]
    assert not (tmp_path / "run").exists()  # refused before any data or model work


def test_commands_not_yet_data_parallel_refuse_several_processes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert cli(["train", "clip", "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: nproc_per_node: `imagesynth train clip` runs in one process")
    assert "train diffusion" in line and not (tmp_path / "run").exists()


def test_gradient_accumulation_keeps_the_global_batch(shapes_folder, tmp_path, minilm):
    settings = dict(preset="tiny", show_progress=False, text_encoder=minilm)
    train_diffusion(shapes_folder(24), tmp_path / "one", overrides=dict(RESUMABLE), **settings)
    train_diffusion(shapes_folder(24), tmp_path / "accumulated",
                    overrides=dict(RESUMABLE, grad_accum=4), **settings)
    assert_close_losses(tmp_path / "accumulated", tmp_path / "one")
    assert_close_weights(tmp_path / "accumulated" / "model" / "model.safetensors",
                         tmp_path / "one" / "model" / "model.safetensors")


def test_two_processes_train_as_one(shapes_folder, tmp_path, minilm):
    data = shapes_folder(24)
    command = ["-m", "imagesynth", "train", "diffusion", "--data", str(data), "--out",
               str(tmp_path / "two"), "--preset", "tiny", "--steps", "20", "--batch-size", "8"]
    proc = subprocess.run(torchrun(2, *command), capture_output=True, text=True,
                          env=environment(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("finished after 20 steps") == 1  # rank 0 alone reports
    train_diffusion(data, tmp_path / "one", preset="tiny", show_progress=False,
                    text_encoder=minilm, overrides=dict(max_steps=20, batch_size=8,
                                                        precision="fp32", seed=0))
    assert_close_losses(tmp_path / "two", tmp_path / "one")
    assert len(log(tmp_path / "two")) == 2  # logged once (steps 10 and 20), by rank 0
    for name in ("model/model.safetensors", "checkpoints/step_00000020/model.safetensors",
                 "checkpoints/step_00000020/optimizer.safetensors"):
        assert_close_weights(tmp_path / "two" / name, tmp_path / "one" / name)
    state = json.loads((tmp_path / "two/checkpoints/step_00000020/state.json").read_text())
    assert state["world_size"] == 2


#: train the tiny diffusion model; the process writing checkpoint `kill_at` then dies by SIGKILL
KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from imagesynth.train import loop
    from imagesynth.families.diffusion import train_diffusion

    data, out, kill_at, overrides = sys.argv[1], sys.argv[2], int(sys.argv[3]), eval(sys.argv[4])
    save = loop.save_checkpoint

    def save_then_die(root, step, *args, **kwargs):
        folder = save(root, step, *args, **kwargs)
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return folder

    loop.save_checkpoint = save_then_die
    train_diffusion(data, out, preset="tiny", overrides=overrides, show_progress=False)
""")


@pytest.fixture(scope="module")
def straight_run(shapes_folder, tmp_path_factory, minilm):
    """One process, never interrupted: what every resumed run must equal."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train_diffusion(shapes_folder(24), run, preset="tiny", overrides=dict(RESUMABLE),
                    show_progress=False, text_encoder=minilm)
    return run


def start_killed_run(tmp_path, nproc: int, data, out, kill_at: int, overrides: dict):
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN)
    args = [str(script), str(data), str(out), str(kill_at), repr(overrides)]
    command = torchrun(nproc, *args) if nproc > 1 else [sys.executable, *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment(),
                          timeout=600)


@pytest.mark.slow  # two launches of two processes each: about a minute on two busy cores
def test_a_killed_two_process_run_resumes_on_one(shapes_folder, tmp_path, minilm, straight_run):
    data, run = shapes_folder(24), tmp_path / "run"
    # two processes, each accumulating two micro-batches of 2: the global batch stays 8
    proc = start_killed_run(tmp_path, 2, data, run, 8, dict(RESUMABLE, grad_accum=2))
    assert proc.returncode != 0
    done = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert done == ["step_00000004", "step_00000008"]
    assert json.loads((run / "checkpoints/step_00000008/state.json").read_text())[
        "world_size"] == 2
    resumed = train_diffusion(data, run, preset="tiny", overrides=dict(RESUMABLE),
                              show_progress=False, text_encoder=minilm)
    assert resumed.steps == 20 and resumed.stopped == "finished"
    assert_close_losses(run, straight_run)
    assert_close_weights(run / "model/model.safetensors", straight_run / "model/model.safetensors")


@pytest.mark.slow
def test_a_killed_one_process_run_resumes_on_two(shapes_folder, tmp_path, straight_run):
    data, run = shapes_folder(24), tmp_path / "run"
    proc = start_killed_run(tmp_path, 1, data, run, 8, dict(RESUMABLE))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "step_00000008"
    proc = start_killed_run(tmp_path, 2, data, run, -1, dict(RESUMABLE))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_close_losses(run, straight_run)
    assert_close_weights(run / "model/model.safetensors", straight_run / "model/model.safetensors")


@pytest.mark.slow  # GAN: minibatch-std groups and the shared R1 coin survive strided shards
def test_two_gan_processes_train_as_one(shapes_folder, tmp_path, minilm):
    from imagesynth.families.gan import train_gan

    data = shapes_folder(48)
    command = ["-m", "imagesynth", "train", "gan", "--data", str(data), "--out",
               str(tmp_path / "two"), "--preset", "tiny", "--steps", "12"]
    proc = subprocess.run(torchrun(2, *command), capture_output=True, text=True,
                          env=environment(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train_gan(data, tmp_path / "one", preset="tiny", text_encoder=minilm, show_progress=False,
              overrides=dict(max_steps=12, precision="fp32", seed=0))
    assert_close_losses(tmp_path / "two", tmp_path / "one")
    name = "checkpoints/step_00000012/model.safetensors"
    assert_close_weights(tmp_path / "two" / name, tmp_path / "one" / name)
