"""Stable Diffusion 1.x / 2.x / SDXL from local diffusers components, on imagesynth's engine.

The diffusers UNet runs behind the engine's discrete eps/v adapters (`DiscreteEpsDenoiser`,
`DiscreteVDenoiser`), so every sampler, CFG with negative prompts, guidance rescale, CLIP
guidance, img2img, inpainting and the studio's previews work on it unchanged. Only what is
specific to SD lives here: CLIP text encoding (with A1111 weighting and long prompts), SDXL's
pooled and size conditioning, the VAE, the 9-channel inpainting UNet, the schedule (read off the
model's own scheduler config, as diffusers builds it) and diffusers-format LoRA files.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..diffusion.denoisers import DiscreteEpsDenoiser, DiscreteVDenoiser
from ..errors import ConfigError
from ..pipeline import DiffusionPipeline, _to_pil

DEFAULTS = {"default_steps": 25, "default_sampler": "euler", "default_guidance": 7.5}


class SDUNet(nn.Module):
    """A diffusers UNet with SD's extra inputs as plain tensors, so CFG can batch both branches.

    `text_embeds`/`time_ids` become SDXL's `added_cond_kwargs`; `inpaint_condition` (mask and
    masked-image latents, [B,5,h,w]) is appended to the already scaled input of a 9-channel
    inpainting UNet, as diffusers' inpainting pipeline does; ControlNet residuals
    (`diffusion.control`, `sd.control`) pass through to the UNet's skips.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, *, encoder_hidden_states: torch.Tensor,
                text_embeds: torch.Tensor | None = None, time_ids: torch.Tensor | None = None,
                inpaint_condition: torch.Tensor | None = None,
                down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
                mid_block_additional_residual: torch.Tensor | None = None) -> torch.Tensor:
        """eps or v prediction for the scaled input x at (continuous) timestep t."""
        if inpaint_condition is not None:
            x = torch.cat([x, inpaint_condition.expand(x.shape[0], -1, -1, -1)], dim=1)
        dtype = self.unet.dtype  # fp16/bf16 weights: the sampler itself stays in float32
        added = None
        if text_embeds is not None:
            added = {"text_embeds": text_embeds.to(dtype), "time_ids": time_ids.to(dtype)}
        if down_block_additional_residuals is not None:
            down_block_additional_residuals = tuple(
                r.to(dtype) for r in down_block_additional_residuals)
            mid_block_additional_residual = mid_block_additional_residual.to(dtype)
        out = self.unet(x.to(dtype), t, encoder_hidden_states=encoder_hidden_states.to(dtype),
                        added_cond_kwargs=added,
                        down_block_additional_residuals=down_block_additional_residuals,
                        mid_block_additional_residual=mid_block_additional_residual,
                        return_dict=False)[0]
        return out.float()


class SDPipeline(DiffusionPipeline):
    """A Stable Diffusion model (diffusers components) behind imagesynth's pipeline interface."""

    def __init__(self, pipe, info, model_name: str, model_hash: str,
                 device: torch.device | str = "cpu"):
        self.pipe = pipe.to(device)
        self.info = info
        self.unet, self.vae, self.scheduler = pipe.unet.eval(), pipe.vae.eval(), pipe.scheduler
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        adapter = DiscreteVDenoiser if info.prediction == "v_prediction" else DiscreteEpsDenoiser
        denoiser = adapter(SDUNet(self.unet), self.scheduler.alphas_cumprod)
        native = int(self.unet.config.sample_size) * self.vae_scale_factor
        config = {"family": "diffusion", "kind": info.arch, "image_size": native,
                  "sample_size": int(self.unet.config.sample_size), "channels": 4,
                  "prediction_type": info.prediction, "diffusion": dict(DEFAULTS)}
        super().__init__(denoiser, None, config, model_name, model_hash, None, device)
        self._loaded_loras: dict[str, str] = {}

    def with_loras(self, loras) -> tuple[nn.Module, list[dict[str, Any]]]:
        """Activate LoRA files [(FILE or LoraFile, weight), ...] on the UNet and text encoders
        (diffusers and kohya layouts, through diffusers' loader; `sd.lora`); none deactivates
        them. The denoiser is the model's own: adapters live inside its modules."""
        if not loras and not hasattr(self, "_lora_set"):
            return self.denoiser, []
        from .lora import SDLoraSet

        if not hasattr(self, "_lora_set"):
            self._lora_set = SDLoraSet(self.pipe, self.info, self.model_hash)
        return self.denoiser, self._lora_set.activate(list(loras or []))

    def with_controls(self, denoiser, controls, schedule: torch.Tensor, size: int | None = None):
        """`denoiser` under diffusers-format or original-layout ControlNet files (`sd.control`)
        and their recipe entries; loaded ControlNets are kept for the next call."""
        from .control import sd_controlled_denoiser

        if not hasattr(self, "_controlnets"):
            self._controlnets = {}
        return sd_controlled_denoiser(denoiser, controls, schedule.to(self.device),
                                      unet=self.unet, size=size or self.image_size,
                                      vae_scale_factor=self.vae_scale_factor,
                                      device=self.device, cache=self._controlnets)

    # ---- sizes and schedule ---------------------------------------------------------------
    @property
    def allowed_sizes(self) -> list[int]:
        """Image sides this model generates: multiples of 64 around its native resolution."""
        return [side for side in range(256, 2 * self.image_size + 1, 64)] or [self.image_size]

    def check_size(self, width: int, height: int | None = None) -> None:
        """Refuse sides that are not multiples of the VAE's scale factor (a ConfigError)."""
        height = width if height is None else height
        factor = self.vae_scale_factor
        for side in (width, height):
            if side % factor or not factor <= side <= 4096:
                raise ConfigError(f"{side} is not a multiple of {factor}", field="size",
                                  fix=f"use a multiple of {factor} up to 4096, e.g. "
                                      f"{self.image_size}")

    def latent_shape(self, size) -> tuple[int, int, int]:
        """Latents [4, height/8, width/8] for an image of `size` (a side or (width, height))."""
        from ..pipeline import size_pair

        width, height = size_pair(size)
        factor = self.vae_scale_factor
        return int(self.unet.config.out_channels), height // factor, width // factor

    def _euler_scheduler(self, num_steps: int):
        from diffusers import EulerDiscreteScheduler

        scheduler = EulerDiscreteScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(num_steps, device="cpu")
        return scheduler

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """The model's own schedule (its scheduler config's spacing), as diffusers' Euler builds it."""
        return self._euler_scheduler(num_steps).sigmas.float().to(self.device)

    def noise_scale(self, sigmas: torch.Tensor) -> torch.Tensor | float:
        """diffusers' `init_noise_sigma`: sigma_max for linspace/trailing spacing, else
        sqrt(sigma_max^2 + 1) (the std of x_T = sqrt(abar) x0 + sqrt(1 - abar) eps in sigma units)."""
        spacing = self.scheduler.config.get("timestep_spacing", "linspace")
        sigma_max = sigmas[0]
        return sigma_max if spacing in ("linspace", "trailing") else (sigma_max ** 2 + 1) ** 0.5

    def img2img_sigmas(self, num_steps: int, strength: float) -> torch.Tensor:
        """diffusers' img2img rule: the last int(num_steps * strength) steps of the schedule."""
        from ..diffusion import truncate_sigmas

        return truncate_sigmas(self.sigmas(num_steps), strength)

    def schedule_recipe(self) -> dict[str, Any]:
        """The scheduler settings the schedule is read from."""
        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                "timestep_spacing", "steps_offset", "use_karras_sigmas", "prediction_type")
        config = self.scheduler.config
        return {"schedule": "diffusers", **{k: config.get(k) for k in keys if k in config},
                "prediction_type": self.info.prediction}

    # ---- text ----------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_one(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """States [1, 77k, D] (and SDXL's pooled [1, P]) of one prompt, A1111 weighting and
        75-token chunks included (`prompt_weights`)."""
        from .prompt_weights import encode_weighted_prompt

        if self.info.arch != "sdxl":
            clip_skip = getattr(self, "clip_skip", None)
            states, _ = encode_weighted_prompt(self.pipe.text_encoder, self.pipe.tokenizer, prompt,
                                               hidden_state="last", clip_skip=clip_skip)
            return states.float(), None
        first, _ = encode_weighted_prompt(self.pipe.text_encoder, self.pipe.tokenizer, prompt,
                                          hidden_state="penultimate")
        second, pooled = encode_weighted_prompt(self.pipe.text_encoder_2, self.pipe.tokenizer_2,
                                                prompt, hidden_state="penultimate")
        return torch.cat([first, second], dim=-1).float(), pooled.float()

    def _time_ids(self, size) -> torch.Tensor:
        # SDXL's micro-conditioning: original (height, width), crop top-left, target (height, width).
        from ..pipeline import size_pair

        width, height = size_pair(size)
        return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)

    def guided_denoiser(self, prompts: list[str], negative_prompt: str, guidance_scale: float,
                        base_denoiser=None, size: int | None = None,
                        guidance_rescale: float = 0.0,
                        extra: list[dict[str, torch.Tensor]] | None = None):
        """The denoiser under CFG with SD's text conditioning, one CFG pair per sample.

        `extra` (one dict per sample) adds conditioning tensors to both branches of that sample
        (the inpainting UNet's mask and masked-image latents).
        """
        from ..diffusion import ClassifierFreeGuidance, PerSampleDenoiser
        from .prompt_weights import pad_to_same_length

        size = size or self.image_size
        zero_negative = (self.info.arch == "sdxl" and not negative_prompt
                         and self.pipe.config.get("force_zeros_for_empty_prompt", True))
        negative, negative_pooled = self._encode_one(negative_prompt)
        branches = {}
        for prompt in dict.fromkeys(prompts):
            states, pooled = self._encode_one(prompt)
            if zero_negative:  # as diffusers' SDXL: no negative prompt -> zero embeddings
                uncond_states, uncond_pooled = torch.zeros_like(states), torch.zeros_like(pooled)
            else:
                uncond_states = negative
                if states.shape[1] != negative.shape[1]:  # a long prompt: pad with empty chunks
                    states, uncond_states = pad_to_same_length(states, negative, self._pad_chunk())
                uncond_pooled = negative_pooled
            cond = {"encoder_hidden_states": states.to(self.device)}
            uncond = {"encoder_hidden_states": uncond_states.to(self.device)}
            if self.info.arch == "sdxl":
                time_ids = self._time_ids(size).to(self.device)
                cond.update(text_embeds=pooled.to(self.device), time_ids=time_ids)
                uncond.update(text_embeds=uncond_pooled.to(self.device), time_ids=time_ids)
            branches[prompt] = cond, uncond
        denoiser = base_denoiser or self.denoiser
        guided = []
        for i, prompt in enumerate(prompts):
            cond, uncond = branches[prompt]
            if extra is not None:
                cond, uncond = {**cond, **extra[i]}, {**uncond, **extra[i]}
            guided.append(ClassifierFreeGuidance(denoiser, cond, uncond, guidance_scale,
                                                 guidance_rescale))
        return guided[0] if len(guided) == 1 else PerSampleDenoiser(guided)

    def inpaint(self, sample, guided, x0: torch.Tensor, mask: torch.Tensor,
                template: torch.Tensor, generators, num_steps: int, mask_blur: float,
                callback=None) -> torch.Tensor:
        """Inpainting: a 9-channel inpainting UNet reads the mask and the masked image itself.

        As `StableDiffusionInpaintPipeline` at strength 1: start from pure noise, binarise the
        mask at 0.5, keep the image where it is 0, encode that masked image (a posterior sample
        drawn after the starting noise, from the same generator) and append the mask resized to
        the latents (nearest) and those latents to the UNet input at every step. Models with 4
        input channels use the engine's `InpaintDenoiser` instead.
        """
        if not self.info.inpaint:
            return super().inpaint(sample, guided, x0, mask, template, generators, num_steps,
                                   mask_blur, callback)
        from ..diffusion import randn_like_per_sample

        sigmas = self.sigmas(num_steps)
        x = randn_like_per_sample(template, generators) * self.noise_scale(sigmas)
        binary = (mask >= 0.5).to(x0.dtype)
        masked_latents = self._encode_image(x0 * (binary < 0.5), generators)
        small = torch.nn.functional.interpolate(binary, size=template.shape[-2:])
        extra = [{"inpaint_condition": torch.cat([small, masked_latents[i:i + 1]], dim=1)}
                 for i in range(len(generators))]
        return sample(guided(extra=extra), x, sigmas, generator=generators, callback=callback)

    def _pad_chunk(self) -> torch.Tensor:
        """States of the empty prompt: what a shorter prompt is padded with, chunk by chunk."""
        return self._encode_one("")[0]

    def encode_prompts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states [B,T,D] and an all-ones mask (SD attends to every token, padding too)."""
        states = [self._encode_one(text)[0] for text in texts]
        length = max(s.shape[1] for s in states)
        pad = self._pad_chunk()
        padded = []
        for s in states:
            while s.shape[1] < length:
                s = torch.cat([s, pad], dim=1)
            padded.append(s)
        stacked = torch.cat(padded).to(self.device)
        return stacked, torch.ones(stacked.shape[:2], device=self.device)

    # ---- images --------------------------------------------------------------------------
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images near [-1, 1]; differentiable (CLIP guidance)."""
        z = (x / self.vae.config.scaling_factor).to(self.vae.dtype)
        return self.vae.decode(z, return_dict=False)[0].float()

    def enable_attention_slicing(self, slice_size: str | int = "auto") -> None:
        """Compute attention in slices: less peak memory for large images, same result."""
        self.pipe.enable_attention_slicing(slice_size)

    def enable_vae_tiling(self) -> None:
        """Decode large images tile by tile (diffusers' VAE tiling): bounded memory at any size."""
        self.vae.enable_tiling()

    def enable_model_cpu_offload(self) -> None:
        """On a GPU, keep each component on the CPU until it runs (needs `accelerate`)."""
        if self.device.type != "cuda":
            raise ConfigError("model CPU offload moves components to a GPU; none is in use",
                              field="device", fix="leave offload off on CPU-only machines")
        self.pipe.enable_model_cpu_offload()

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        from ..errors import NumericError

        if not torch.isfinite(x).all():
            raise NumericError("the sampler produced NaN or Inf", field="sampling",
                               fix="lower the guidance scale, or use more steps")
        with torch.no_grad():  # one image per call, so batches never change an image's bytes
            return torch.cat([self.decode(x[i:i + 1]) for i in range(len(x))])

    def preview(self, denoised: torch.Tensor) -> list:
        """A sampler step's denoised latents as 8-bit images."""
        with torch.no_grad():
            return _to_pil(torch.nan_to_num(self.decode(denoised).float()))

    def _encode_image(self, images: torch.Tensor, generators=None) -> torch.Tensor:
        """Images [1,3,H,W] -> scaled latents, sampled from the VAE posterior with each generator.

        diffusers draws the posterior sample before the noise, from the same generator; so does
        this, so img2img equals `StableDiffusionImg2ImgPipeline` with the same seed.
        """
        with torch.no_grad():
            posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
            if generators is None:
                return posterior.mode() * self.vae.config.scaling_factor
            rows = [posterior.sample(generator=g).float() for g in generators]
        return torch.cat(rows) * self.vae.config.scaling_factor
