"""CLIP-guided synthesis: one optimisation loop over interchangeable drawers, cutouts and losses."""

from .cutouts import CutoutConfig, augmented_cutouts
from .drawers import (DRAWERS, DecoderDrawer, FourierDrawer, PixelArtDrawer, PixelDrawer,
                      build_drawer)
from .diffusion_drawer import DiffusionLatentDrawer
from .loop import DreamConfig, DreamResult, dream, reproduce_from_recipe
from .prompts import STYLE_PRESETS, WeightedPrompt, parse_prompts
from .video import Mp4Writer, save_gif, save_mp4

__all__ = ["DRAWERS", "CutoutConfig", "DecoderDrawer", "DiffusionLatentDrawer", "DreamConfig",
           "DreamResult", "FourierDrawer", "Mp4Writer", "PixelArtDrawer", "PixelDrawer",
           "STYLE_PRESETS", "WeightedPrompt", "augmented_cutouts", "build_drawer", "dream",
           "parse_prompts", "reproduce_from_recipe", "save_gif", "save_mp4"]
