"""`imagesynth sweep`: paired errors against a converged reference on a tiny trained model."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from imagesynth.apps.sweep import SweepConfig, SweepResult, nfe_of, run_sweep
from imagesynth.cli import run
from imagesynth.errors import ConfigError

PROMPTS = ("a red circle", "a blue square on the left")


@pytest.fixture(autouse=True)
def shared_text_encoder(monkeypatch, minilm):
    """Loading a model loads its text encoder; reuse the session's to keep tests fast."""
    import imagesynth.text

    monkeypatch.setattr(imagesynth.text, "load_text_encoder", lambda *a, **k: minilm)


@pytest.fixture(scope="module")
def tiny_model(tiny_diffusion_model):
    return tiny_diffusion_model


@pytest.fixture(scope="module")
def pipe(tiny_model, minilm):
    from imagesynth.pipeline import load_pipeline

    return load_pipeline(str(tiny_model), text_encoder=minilm)


def test_the_reference_itself_has_zero_error(pipe):
    config = SweepConfig(samplers=("dpmpp_2m", "euler"), steps=(3, 6), prompts=PROMPTS,
                         seeds=2, reference="dpmpp_2m:6", converged_nfe=0, clip="")
    result = run_sweep(config, pipe=pipe)
    same = next(r for r in result.rows if r.sampler == "dpmpp_2m" and r.steps == 6)
    assert same.rmse_pixels == 0.0 and same.rmse_latent is None
    assert all(r.rmse_pixels > 1e-4 for r in result.rows if r is not same)
    assert result.images == 4 and result.task == "shapes"  # ShapesWorld prompts: the checker
    assert result.feature is None and all(r.feature_distance is None for r in result.rows)
    # no own converged run: Euler's excess is not defined, but it gets a recommendation against 0
    assert all(r.excess is None for r in result.rows)


def test_errors_fall_with_steps_and_the_checks_use_each_samplers_converged_run(pipe):
    # From 8 steps on the tiny model's ODE is in the asymptotic regime (at 4 -> 8 steps DPM++ 2M's
    # error still rises a little): Euler's error halves per doubling, the second-order ones' quarter.
    config = SweepConfig(samplers=("euler", "heun", "dpmpp_2m", "euler_a"), steps=(8, 16, 32),
                         prompts=PROMPTS, reference="dpmpp_2m:100", converged_nfe=80,
                         converged_samplers=("heun", "dpmpp_2m", "euler_a"), clip="", task="none")
    result = run_sweep(config, pipe=pipe)
    for sampler, low, high in (("euler", 1.5, 2.5), ("heun", 3, 8), ("dpmpp_2m", 3, 8)):
        grid = [r for r in result.rows_of(sampler) if r.role == "grid"]
        assert [r.nfe for r in grid] == [nfe_of(sampler, s) for s in (8, 16, 32)]
        errors = [r.rmse_pixels for r in grid]
        assert errors == sorted(errors, reverse=True), sampler
        assert low < errors[1] / errors[2] < high, (sampler, errors)
    assert nfe_of("heun", 18) == 35 and any(
        r.role == "check" and r.nfe == 35 for r in result.rows_of("heun"))
    converged = {r.sampler: r for r in result.rows if r.role == "converged"}
    assert set(converged) == {"heun", "dpmpp_2m", "euler_ancestral"}
    assert converged["heun"].nfe == 79 and converged["dpmpp_2m"].nfe == 80
    # Euler ancestral's converged run is another random draw: compared with, never subtracted
    ancestral = result.rows_of("euler_ancestral")
    assert all(r.excess is None and r.rmse_own_converged is not None for r in ancestral)
    assert "euler" not in converged and all(r.excess is None for r in result.rows_of("euler"))
    assert converged["dpmpp_2m"].rmse_pixels < 2e-3  # 80 vs 100 steps of the same method
    scale = result.data_scale["pixels"]
    heun = next(r for r in result.rows_of("heun") if r.nfe == 35)
    assert heun.excess == pytest.approx((heun.rmse_pixels - converged["heun"].rmse_pixels) / scale)
    criteria = result.criteria()
    assert criteria["heun_35_nfe"]["met"] == (heun.excess <= 0.05)
    assert criteria["dpmpp_2m_le_20_nfe"]["nfe"] <= 20
    assert "euler_ancestral" not in result.recommended()  # stochastic: no converged image
    assert result.recommended()["dpmpp_2m"]["steps"] in (8, 16, 32)
    again = SweepResult.from_dict(json.loads(result.to_json()))
    assert again.to_markdown() == result.to_markdown() and again.criteria() == criteria


def test_clip_feature_error_and_fd_once_the_set_is_large_enough(pipe, tiny_clip_run):
    _, clip_run = tiny_clip_run  # embed_dim 32: FD needs 33 images
    config = SweepConfig(samplers=("dpmpp_2m",), steps=(2, 8), prompts=("a red circle",),
                         seeds=40, reference="dpmpp_2m:8", converged_nfe=0,
                         clip=str(clip_run.model_dir), task="none")
    result = run_sweep(config, pipe=pipe)
    few, same = result.rows_of("dpmpp_2m")
    assert result.fd_min_images == 33 and result.images == 40
    assert same.feature_distance == pytest.approx(0.0, abs=1e-6)
    assert same.fd == pytest.approx(0.0, abs=1e-6)
    assert few.feature_distance > 1e-4 and few.fd > 1e-4
    small = run_sweep(SweepConfig(samplers=("dpmpp_2m",), steps=(2,), prompts=PROMPTS,
                                  reference="dpmpp_2m:4", converged_nfe=0,
                                  clip=str(clip_run.model_dir), task="none"), pipe=pipe)
    assert small.rows[0].fd is None and small.rows[0].feature_distance > 0
    assert "FD needs at least 33 images" in small.to_markdown()


def test_cli_writes_json_markdown_and_figure(tiny_model, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na green triangle on the top\n")
    out = tmp_path / "report" / "sweep"
    code = run(["sweep", "--model", str(tiny_model), "--samplers", "euler,euler_a",
                "--steps", "2,4", "--prompts", str(prompts), "--seeds", "2",
                "--reference", "heun:6", "--converged-nfe", "0", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["images"] == 4 and data["prompts"] == ["a red circle", "a green triangle on the top"]
    assert data["reference"] == {**data["reference"], "sampler": "heun", "steps": 6, "nfe": 11}
    assert [(r["sampler"], r["steps"]) for r in data["rows"]] == [
        ("euler", 2), ("euler", 4), ("euler_ancestral", 2), ("euler_ancestral", 4)]
    assert all(r["seconds_per_image"] > 0 for r in data["rows"])
    markdown = out.with_suffix(".md").read_text()
    assert "| euler_ancestral | 4 | 4 |" in markdown
    with Image.open(out.with_suffix(".png")) as figure:
        assert figure.format == "PNG" and figure.width > 400


@pytest.mark.parametrize("kwargs, field", [
    (dict(samplers=("euler", "bogus")), "samplers"),
    (dict(samplers=()), "samplers"),
    (dict(steps=()), "steps"),
    (dict(steps=(8, 4)), "steps"),
    (dict(steps=(4, 4, 8)), "steps"),
    (dict(steps=(0, 4)), "steps"),
    (dict(reference="euler_a:100"), "reference"),
    (dict(reference="dpmpp_2m"), "reference"),
    (dict(converged_nfe=50), "converged_nfe"),
    (dict(samplers=("heun",), steps=(4, 8), converged_nfe=30), "converged_nfe"),  # 35-NFE check
    (dict(converged_samplers=("ddpm",)), "converged_samplers"),
    (dict(task="fid"), "task"),
])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError) as caught:
        SweepConfig(**kwargs)
    assert caught.value.field == field


@pytest.mark.parametrize("argv, field", [
    (["--samplers", "euler,lms"], "samplers"),
    (["--steps", ""], "steps"),
    (["--steps", "8,6"], "steps"),
    (["--steps", "4,x"], "steps"),
])
def test_cli_bad_input_is_a_one_line_error(argv, field, capsys):
    code = run(["sweep", *argv, "--out", "unused"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and f"{field}:" in err
