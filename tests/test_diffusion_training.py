"""The diffusion family on the shared loop: caption table, objective, resume, latent mode."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from imagesynth.data import ShapesConfig, build_shapes_dataset
from imagesynth.diffusion import EDMDenoiser
from imagesynth.families.diffusion import DiffusionObjective, export_checkpoint, train_diffusion
from imagesynth.train.datasets import encode_caption_table
from imagesynth.errors import ConfigError, DataError
from imagesynth.io.checkpoint import load_weights
from imagesynth.nets.unet import build_unet, unet_config


class PoolingAutoencoder(torch.nn.Module):
    """Stand-in autoencoder: 2x average-pool to 4 channels, nearest upsample back."""

    latent_channels, downsample_factor = 4, 2

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device

    def encode(self, images):
        pooled = F.avg_pool2d(images, 2)
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], 1)

    def decode(self, latents):
        return F.interpolate(latents[:, :3], scale_factor=2, mode="nearest")


@pytest.fixture(scope="module")
def shapes16(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes16")
    build_shapes_dataset(out, ShapesConfig(count=24, size=16, seed=0))
    return out


def test_caption_table_pads_and_keeps_the_empty_caption(minilm):
    table = encode_caption_table(minilm, ["a red circle", "a blue square left of a green circle"])
    assert table.empty == 0 and table.index[""] == 0
    direct = minilm(["a blue square left of a green circle"])
    row = table.index["a blue square left of a green circle"]
    n = int(direct.mask.sum())
    assert int(table.mask[row].sum()) == n
    assert torch.allclose(table.states[row, :n], direct.states[0, :n], atol=1e-5)
    assert table.mask[0].sum() == minilm([""]).mask.sum()


def test_objective_is_a_function_of_the_step_generator(minilm):
    table = encode_caption_table(minilm, ["a red circle", "a blue square"])
    torch.manual_seed(0)
    denoiser = EDMDenoiser(build_unet(unet_config("tiny", sample_size=8)))
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    choices = torch.tensor([[1, -1], [2, -1], [1, 2], [2, 1]])
    objective = DiffusionObjective(table, condition_dropout=0.5, latent=False)
    first, _ = objective(denoiser, (images, choices), torch.Generator().manual_seed(3))
    again, _ = objective(denoiser, (images, choices), torch.Generator().manual_seed(3))
    other, _ = objective(denoiser, (images, choices), torch.Generator().manual_seed(4))
    assert torch.isfinite(first) and first == again and first != other


def test_full_dropout_trains_on_the_empty_caption_only(minilm):
    table = encode_caption_table(minilm, ["a red circle"])
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x, c_noise, encoder_hidden_states, encoder_attention_mask):
            seen.append(encoder_hidden_states)
            return torch.zeros_like(x)

    objective = DiffusionObjective(table, condition_dropout=0.999999, latent=False)
    batch = (torch.zeros(3, 3, 8, 8, dtype=torch.uint8), torch.tensor([[1], [1], [1]]))
    objective(EDMDenoiser(Recorder()), batch, torch.Generator().manual_seed(0))
    assert torch.equal(seen[0], table.states[[0, 0, 0]])


def _weights(run):
    return load_weights(run / "model" / "model.safetensors")


def test_resume_after_a_stop_gives_identical_weights(shapes16, tmp_path, minilm):
    settings = dict(preset="tiny", overrides=dict(max_steps=4, batch_size=4, checkpoint_every=100),
                    show_progress=False, text_encoder=minilm)
    train_diffusion(shapes16, tmp_path / "straight", **settings)
    stopped = train_diffusion(shapes16, tmp_path / "resumed", stop_after=2, **settings)
    assert stopped.stopped == "time_budget" and stopped.steps == 2
    resumed = train_diffusion(shapes16, tmp_path / "resumed", **settings)
    assert resumed.steps == 4
    straight, again = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert straight.keys() == again.keys()
    assert all(torch.equal(straight[k], again[k]) for k in straight)
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    straight_log = [json.loads(line)
                    for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [e["loss"] for e in log] == [e["loss"] for e in straight_log]


def test_progress_grids_are_written_during_training(shapes16, tmp_path, minilm):
    run = tmp_path / "run"
    train_diffusion(shapes16, run, preset="tiny", show_progress=False, text_encoder=minilm,
                    overrides=dict(max_steps=2, batch_size=4, sample_every=2))
    grids = sorted((run / "samples").glob("step-*.png"))
    assert [g.name for g in grids] == ["step-0000002.png"]


def test_export_writes_the_newest_checkpoint_as_a_model(shapes16, tmp_path, minilm):
    from imagesynth.pipeline import load_pipeline

    run = tmp_path / "run"
    settings = dict(preset="tiny", show_progress=False, text_encoder=minilm,
                    overrides=dict(max_steps=4, batch_size=4, checkpoint_every=2))
    with pytest.raises(DataError) as info:
        export_checkpoint(run)
    assert info.value.field == "run"
    train_diffusion(shapes16, run, stop_after=2, **settings)  # paused mid-run at step 2
    folder, step = export_checkpoint(run)
    assert step == 2 and folder == run / "model-step-2"
    exported = load_weights(folder / "model.safetensors")
    checkpoint = load_weights(run / "checkpoints" / "step_00000002" / "ema.safetensors")
    assert all(torch.equal(exported[k], checkpoint["network." + k]) for k in exported)
    config = json.loads((folder / "config.json").read_text())
    assert config["steps"] == 2 and config["family"] == "diffusion"
    pipe = load_pipeline(str(folder), text_encoder=minilm)
    assert pipe("a red circle", seed=0, num_steps=2).images[0].size == (16, 16)


def test_cli_export(shapes16, tmp_path, minilm, capsys):
    from imagesynth.cli import run as cli

    assert cli(["train", "export", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a diffusion run folder" in err and len(err.splitlines()) == 1
    train_diffusion(shapes16, tmp_path / "run", preset="tiny", show_progress=False,
                    text_encoder=minilm, stop_after=2,
                    overrides=dict(max_steps=4, batch_size=4, checkpoint_every=2))
    assert cli(["train", "export", str(tmp_path / "run"), "--out", str(tmp_path / "m")]) == 0
    assert "exported step 2" in capsys.readouterr().out
    assert (tmp_path / "m" / "SHA256SUMS").is_file()


def test_latent_mode_records_the_autoencoder_and_generates(shapes16, tmp_path, minilm):
    from imagesynth.pipeline import load_pipeline

    autoencoder = PoolingAutoencoder()
    result = train_diffusion(shapes16, tmp_path / "latent", preset="tiny",
                             overrides=dict(max_steps=2, batch_size=4), show_progress=False,
                             autoencoder=autoencoder, autoencoder_hash="ab" * 32,
                             text_encoder=minilm)
    config = json.loads((result.model_dir / "config.json").read_text())
    assert config["family"] == "diffusion" and config["channels"] == 4
    assert config["sample_size"] == 8 and config["image_size"] == 16
    assert config["autoencoder"]["sha256"] == "ab" * 32
    assert config["unet"]["cross_attention_dim"] == 384 and config["text_encoder"] == "minilm"
    assert list((tmp_path / "latent").glob("latents-*.safetensors"))
    pipe = load_pipeline(str(result.model_dir), autoencoder=autoencoder, text_encoder=minilm)
    out = pipe("a red circle", seed=1, num_steps=2)
    assert out.images[0].size == (16, 16)


def test_a_vector_vae_is_refused_as_the_latent_space(shapes16, tmp_path, minilm):
    from imagesynth.nets.autoencoder import Autoencoder, autoencoder_config

    vae = Autoencoder(autoencoder_config("tiny-v8"))
    with pytest.raises(ConfigError, match="no latent grid") as info:
        train_diffusion(shapes16, tmp_path / "v", preset="tiny", show_progress=False,
                        autoencoder=vae, autoencoder_hash="ab" * 32, text_encoder=minilm)
    assert info.value.field == "autoencoder"


def test_training_errors_name_the_field(shapes16, tmp_path):
    with pytest.raises(ConfigError) as info:
        train_diffusion(shapes16, tmp_path / "x", preset="huge")
    assert info.value.field == "preset"
    with pytest.raises(ConfigError) as info:
        unet_config("huge")
    assert info.value.field == "preset"


def test_coordinate_channels_tell_the_unet_where_it_is():
    from imagesynth.nets.unet import coordinate_maps

    maps = coordinate_maps(torch.zeros(2, 3, 4, 6))
    assert maps.shape == (2, 2, 4, 6)
    assert torch.equal(maps[0, 0, :, 0], torch.full((4,), -1.0))  # x: left column
    assert torch.equal(maps[0, 0, :, -1], torch.ones(4))  # x: right column
    assert torch.equal(maps[0, 1, 0], torch.full((6,), -1.0))  # y: top row
    net = build_unet(unet_config("tiny", coordinates=True))
    assert net.config["in_channels"] == 5 and net.channels == 3
    out = net(torch.randn(2, 3, 16, 16), torch.zeros(2), torch.randn(2, 5, 384), torch.ones(2, 5))
    assert out.shape == (2, 3, 16, 16)
    plain = build_unet(unet_config("tiny"))  # configs saved before the option load unchanged
    assert plain.coordinate_channels == 0 and plain.config["in_channels"] == 3


def test_fine_tuning_starts_from_a_model_and_may_add_coordinate_channels(shapes16, tmp_path, minilm):
    from imagesynth.diffusion.finetune import initialise_from
    from imagesynth.nets.unet import TextConditionedUNet

    base = train_diffusion(shapes16, tmp_path / "base", preset="tiny", show_progress=False,
                           text_encoder=minilm, overrides=dict(max_steps=2, batch_size=4))
    trained = load_weights(base.model_dir / "model.safetensors")
    # Same architecture: the run's step-0 weights are the model's (EMA copies them, too).
    tuned = train_diffusion(shapes16, tmp_path / "tuned", preset="tiny", show_progress=False,
                            text_encoder=minilm, init_from=str(base.model_dir),
                            overrides=dict(max_steps=1, batch_size=4, learning_rate=1e-12,
                                           warmup_steps=0))
    config = json.loads((tuned.model_dir / "config.json").read_text())
    assert config["init_from"]["spec"] == str(base.model_dir) and config["init_from"]["sha256"]
    after = load_weights(tuned.model_dir / "model.safetensors")
    assert all(torch.allclose(after[k], trained[k], atol=1e-8) for k in trained)  # lr ~ 0
    # Widened input: old channels keep their filters, coordinate channels start at zero, so
    # the widened network computes what the old one did.
    settings = unet_config("tiny", sample_size=16, coordinates=True)
    wide = TextConditionedUNet(settings)
    initialise_from(wide, str(base.model_dir), text_encoder="minilm", image_size=16, channels=3,
                    sample_size=16, autoencoder_sha256=None)
    narrow = build_unet(unet_config("tiny", sample_size=16))
    narrow.load_state_dict(trained)
    assert torch.equal(wide.state_dict()["unet.conv_in.weight"][:, 3:], torch.zeros(16, 2, 3, 3))
    x, c_noise, text = torch.randn(2, 3, 16, 16), torch.zeros(2), torch.randn(2, 5, 384)
    with torch.no_grad():
        assert torch.allclose(wide(x, c_noise, text), narrow(x, c_noise, text), atol=1e-5)
    # Wider text states (minilm -> minilm+words): cross-attention keys and values read the new
    # features through zero weights, so the network again computes what the old one did.
    wide_text = TextConditionedUNet(unet_config("tiny", text_dim=768, sample_size=16))
    initialise_from(wide_text, str(base.model_dir), text_encoder="minilm+words", image_size=16,
                    channels=3, sample_size=16, autoencoder_sha256=None)
    key = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert torch.equal(wide_text.state_dict()[key][:, :384], trained[key])
    assert not wide_text.state_dict()[key][:, 384:].any()
    words = torch.cat([text, torch.randn(2, 5, 384)], dim=-1)
    with torch.no_grad():
        assert torch.allclose(wide_text(x, c_noise, words), narrow(x, c_noise, text), atol=1e-5)
    with pytest.raises(ConfigError, match="text encoder"):
        initialise_from(narrow, str(base.model_dir), text_encoder="some/folder", image_size=16,
                        channels=3, sample_size=16, autoencoder_sha256=None)
    # Incompatible models are one-line errors naming the field.
    with pytest.raises(ConfigError, match="image size") as size:
        initialise_from(wide, str(base.model_dir), text_encoder="minilm", image_size=32,
                        channels=3, sample_size=32, autoencoder_sha256=None)
    assert size.value.field == "init_from"
    with pytest.raises(ConfigError, match="autoencoder"):
        initialise_from(wide, str(base.model_dir), text_encoder="minilm", image_size=16,
                        channels=3, sample_size=16, autoencoder_sha256="ab" * 32)
    other = build_unet(unet_config("tiny", sample_size=16, widths=(8, 16), norm_groups=4))
    with pytest.raises(ConfigError, match="init_from|different UNet|needs"):
        initialise_from(other, str(base.model_dir), text_encoder="minilm", image_size=16,
                        channels=3, sample_size=16, autoencoder_sha256=None)


def test_training_noise_distribution_is_configurable(shapes16, tmp_path, minilm, monkeypatch):
    """--train-sigma-mean/std reach the EDM denoiser that samples the training sigmas."""
    import imagesynth.families.diffusion as training
    from imagesynth.families.diffusion import DiffusionConfig

    seen = []

    class Recording(training.EDMDenoiser):
        def sample_training_sigmas(self, *args, **kwargs):
            sigmas = super().sample_training_sigmas(*args, **kwargs)
            seen.append((self.P_mean, self.P_std))
            return sigmas

    monkeypatch.setattr(training, "EDMDenoiser", Recording)
    result = train_diffusion(shapes16, tmp_path / "run", preset="tiny", show_progress=False,
                             text_encoder=minilm, overrides=dict(max_steps=2, batch_size=4),
                             model_overrides=dict(train_sigma_mean=1.5, train_sigma_std=0.5))
    assert seen and set(seen) == {(1.5, 0.5)}
    config = json.loads((result.model_dir / "config.json").read_text())
    assert config["diffusion"]["train_sigma_mean"] == 1.5
    with pytest.raises(ConfigError) as info:
        DiffusionConfig(train_sigma_std=0.0)
    assert info.value.field == "train_sigma_std"


def test_a_minilm_words_model_trains_and_generates(shapes16, tmp_path):
    from imagesynth.pipeline import load_pipeline

    result = train_diffusion(shapes16, tmp_path / "run", preset="tiny", show_progress=False,
                             overrides=dict(max_steps=2, batch_size=4),
                             model_overrides=dict(text_encoder="minilm+words"))
    config = json.loads((result.model_dir / "config.json").read_text())
    assert config["text_encoder"] == "minilm+words"
    assert config["unet"]["cross_attention_dim"] == 768
    pipe = load_pipeline(str(result.model_dir))
    assert pipe("a red circle on the left", seed=0, num_steps=2).images[0].size == (16, 16)
