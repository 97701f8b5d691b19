"""CUDA paths (skipped without a GPU): latent training with progress grids, then generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imagesynth.data import ShapesConfig, build_shapes_dataset
from imagesynth.families.diffusion import train_diffusion
from imagesynth.pipeline import load_pipeline

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_latent_training_and_generation_run_on_cuda(tmp_path, minilm):
    build_shapes_dataset(tmp_path / "data", ShapesConfig(count=32, size=32, seed=0))
    # The progress grids decode latents: the autoencoder must follow the UNet onto the GPU.
    result = train_diffusion(tmp_path / "data", tmp_path / "run", preset="tiny",
                             autoencoder="shapes-f4", model_overrides={"image_size": 32},
                             overrides={"max_steps": 20, "sample_every": 10},
                             text_encoder=minilm, show_progress=False)
    assert len(list((tmp_path / "run" / "samples").glob("step-*.png"))) == 2

    pipe = load_pipeline(str(result.model_dir), text_encoder=minilm)
    assert pipe.device.type == "cuda"
    images = pipe(["a red circle", "a blue square"], seed=[0, 1], num_steps=4).images
    assert [image.size for image in images] == [(32, 32), (32, 32)]
    init = tmp_path / "init.png"
    images[1].save(init)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:, 16:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    edited = pipe("a red circle", seed=0, num_steps=4, init_image=init, strength=0.5)
    painted = pipe("a red circle", seed=0, num_steps=4, init_image=init,
                   mask=tmp_path / "mask.png")
    assert edited.images[0].size == painted.images[0].size == (32, 32)
