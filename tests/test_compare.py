"""`imagesynth compare`: one row per family with the same columns, JSON + Markdown + figure."""

from __future__ import annotations

import json

import pytest

from imagesynth.cli import run


@pytest.fixture(autouse=True)
def shared_text_encoder(monkeypatch, minilm):
    import imagesynth.text

    monkeypatch.setattr(imagesynth.text, "load_text_encoder", lambda *a, **k: minilm)


def test_compare_given_models_writes_the_table_json_and_figure(shapes_folder, tmp_path,
                                                              minilm, capsys):
    from imagesynth.families.flow import train_flow
    from imagesynth.families.gan import train_gan

    folder = shapes_folder(400, size=16)
    gan = train_gan(folder, tmp_path / "gan", preset="tiny", overrides={"max_steps": 4},
                    text_encoder=minilm, show_progress=False).model_dir
    flow = train_flow(folder, tmp_path / "flow", preset="tiny", overrides={"max_steps": 4},
                      show_progress=False).model_dir
    out = tmp_path / "report" / "compare"
    assert run(["compare", "--data", str(folder), "--families", "gan,flow", "--model",
                f"gan={gan}", "--model", f"flow={flow}", "--samples", "32", "--size", "8",
                "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {row["family"]: row for row in report["rows"]}
    assert set(rows) == {"gan", "flow"} and report["extractor"] == "FD_clip-shapes-clip"
    for row in rows.values():
        assert row["images_per_second"] > 0 and row["FD_clip-shapes-clip"] >= 0
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
        assert row["ppl_pixels"] > 0 and 0 <= row["scene_rate"] <= 1
    assert rows["flow"]["bits_per_dim"] > 0 and rows["gan"]["bits_per_dim"] is None
    assert rows["gan"]["checker_pass"] is not None and rows["flow"]["checker_pass"] is None
    assert rows["gan"]["clip_score"] is not None and rows["flow"]["clip_score"] is None
    assert rows["gan"]["seed_claims"]["quality"] == "high"
    assert "| gan |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 1000


@pytest.mark.parametrize("argv, field", [
    (["--families", "gan,unicorn"], "families"),
    (["--model", "gan"], "model"),
    (["--model", "unicorn=x"], "model"),
    (["--budget-minutes", "0"], "budget_minutes"),
])
def test_bad_compare_input_names_the_field(shapes_folder, tmp_path, capsys, argv, field):
    assert run(["compare", "--data", str(shapes_folder(400, size=16)), *argv,
                "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{field}:" in err and len(err.splitlines()) == 1


def test_compare_refuses_models_of_another_size(shapes_folder, tmp_path, capsys):
    assert run(["compare", "--data", str(shapes_folder(400, size=16)), "--families", "vae",
                "--model", "vae=shapes-v32", "--size", "16", "--samples", "16",
                "--out", str(tmp_path / "c")]) == 2
    assert "model:" in capsys.readouterr().err


def test_the_autoregressive_budget_covers_both_of_its_stages(monkeypatch, tmp_path):
    import imagesynth.families.ar as ar
    from imagesynth.apps.compare import train_family

    seen = {}

    def record(data, out, preset, overrides=None, tokenizer_overrides=None, **_):
        seen.update(transformer=overrides, tokenizer=tokenizer_overrides)
        return type("Result", (), {"model_dir": out / "model"})()

    monkeypatch.setattr(ar, "train_ar", record)
    train_family("ar", "data", tmp_path, minutes=11.0)
    total = seen["tokenizer"]["max_minutes"] + seen["transformer"]["max_minutes"]
    assert total == pytest.approx(11.0) and seen["tokenizer"]["max_minutes"] == pytest.approx(4.0)
