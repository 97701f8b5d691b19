"""CLIP-guided synthesis: one optimisation loop over interchangeable drawers, cutouts and losses."""

from .cutouts import CutoutConfig, augmented_cutouts
from .drawers import (DRAWERS, DecoderDrawer, FourierDrawer, PixelArtDrawer, PixelDrawer,
                      build_drawer)
from .loop import DreamConfig, DreamResult, dream, reproduce_from_recipe, save_gif
from .prompts import STYLE_PRESETS, WeightedPrompt, parse_prompts

__all__ = ["DRAWERS", "CutoutConfig", "DecoderDrawer", "DreamConfig", "DreamResult",
           "FourierDrawer", "PixelArtDrawer", "PixelDrawer", "STYLE_PRESETS", "WeightedPrompt",
           "augmented_cutouts", "build_drawer", "dream", "parse_prompts",
           "reproduce_from_recipe", "save_gif"]
