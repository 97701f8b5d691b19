"""Tiny random Stable Diffusion components in the real formats (as diffusers' own tests build them).

SD1 (CLIP text encoder, eps), SD2 (OpenCLIP-style text encoder, linear attention projections,
v-prediction) and SDXL (two text encoders, text_time conditioning), with a 4-level VAE so the
latent is 1/8 of the image side, as in the real models. The tokenizer is CLIP's BPE cut to its
first 486 merges (1,000 tokens), built offline by `imagesynth.sd.tokenizer`.
"""

from __future__ import annotations

from pathlib import Path

import torch

KINDS = ("sd1", "sd2", "sdxl")
VOCAB = 1000  # 512 byte symbols + 486 merges + 2 special tokens
MERGES = VOCAB - 514


def tiny_tokenizer(pad_token: str = "<|endoftext|>"):
    """CLIP's tokenizer cut to 1,000 tokens."""
    from imagesynth.sd.tokenizer import load_clip_tokenizer

    return load_clip_tokenizer(pad_token=pad_token, num_merges=MERGES)


def _text_config(hidden: int, act: str, projection: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4,
                          num_hidden_layers=3, vocab_size=VOCAB, max_position_embeddings=77,
                          hidden_act=act, projection_dim=projection or hidden,
                          bos_token_id=VOCAB - 2, eos_token_id=VOCAB - 1, pad_token_id=VOCAB - 1)


def tiny_vae():
    """A 4-level AutoencoderKL (scale factor 8) with 4 latent channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 8, 16, 16), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4,
                         layers_per_block=1, norm_num_groups=4, sample_size=64)


def tiny_scheduler(prediction_type: str = "epsilon"):
    """SD's own training schedule with the Euler sampler, 'leading' spacing as SD 1.5 ships it."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, steps_offset=1,
                                  timestep_spacing="leading", prediction_type=prediction_type)


def tiny_components(kind: str = "sd1", *, in_channels: int = 4) -> dict:
    """Components of a tiny random pipeline of `kind` (sd1, sd2, sdxl); 9 input channels = inpainting."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    from diffusers import UNet2DConditionModel

    if kind not in KINDS:
        raise ValueError(kind)
    common = dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=8,
                  in_channels=in_channels, out_channels=4, norm_num_groups=8,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    torch.manual_seed(0)
    if kind == "sd1":
        unet = UNet2DConditionModel(cross_attention_dim=32, attention_head_dim=8, **common)
    elif kind == "sd2":
        unet = UNet2DConditionModel(cross_attention_dim=32, attention_head_dim=(2, 4),
                                    use_linear_projection=True, **common)
    else:
        unet = UNet2DConditionModel(cross_attention_dim=64, attention_head_dim=(2, 4),
                                    use_linear_projection=True, addition_embed_type="text_time",
                                    addition_time_embed_dim=8,
                                    projection_class_embeddings_input_dim=6 * 8 + 32,
                                    transformer_layers_per_block=(1, 1), **common)
    vae = tiny_vae()
    torch.manual_seed(1)
    components = {"unet": unet.eval(), "vae": vae.eval()}
    if kind == "sd1":
        components.update(text_encoder=CLIPTextModel(_text_config(32, "quick_gelu")).eval(),
                          tokenizer=tiny_tokenizer(),
                          scheduler=tiny_scheduler("epsilon"),
                          safety_checker=None, feature_extractor=None,
                          requires_safety_checker=False)
    elif kind == "sd2":
        components.update(text_encoder=CLIPTextModel(_text_config(32, "gelu")).eval(),
                          tokenizer=tiny_tokenizer("!"),
                          scheduler=tiny_scheduler("v_prediction"),
                          safety_checker=None, feature_extractor=None,
                          requires_safety_checker=False)
    else:
        components.update(text_encoder=CLIPTextModel(_text_config(32, "quick_gelu")).eval(),
                          tokenizer=tiny_tokenizer(),
                          text_encoder_2=CLIPTextModelWithProjection(_text_config(32, "gelu")).eval(),
                          tokenizer_2=tiny_tokenizer("!"),
                          scheduler=tiny_scheduler("epsilon"))
    return components


def tiny_pipeline(kind: str = "sd1", *, inpaint: bool = False):
    """The diffusers pipeline of `kind` over fresh tiny components."""
    from diffusers import (StableDiffusionInpaintPipeline, StableDiffusionPipeline,
                           StableDiffusionXLPipeline)

    components = tiny_components(kind, in_channels=9 if inpaint else 4)
    if kind == "sdxl":
        return StableDiffusionXLPipeline(**components)
    cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    return cls(**components)


def save_tiny_folder(folder: str | Path, kind: str = "sd1", *, inpaint: bool = False) -> Path:
    """Save a tiny pipeline of `kind` as a diffusers folder (model_index.json + components)."""
    folder = Path(folder)
    tiny_pipeline(kind, inpaint=inpaint).save_pretrained(folder, safe_serialization=True)
    return folder
