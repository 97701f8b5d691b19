"""CLIP-guided synthesis: one optimisation loop over interchangeable drawers, cutouts and losses."""

from .cutouts import CutoutConfig, augmented_cutouts
from .drawers import (DRAWERS, DecoderDrawer, FourierDrawer, PixelArtDrawer, PixelDrawer,
                      build_drawer)
from .diffusion_drawer import DiffusionLatentDrawer
from .edit_clip import EditClipConfig, EditClipResult, edit_clip
from .gan_drawer import GANDrawer
from .loop import DreamConfig, DreamResult, dream, reproduce_from_recipe
from .prompts import STYLE_PRESETS, WeightedPrompt, parse_prompts
from .video import Mp4Writer, save_gif, save_mp4

__all__ = ["DRAWERS", "CutoutConfig", "DecoderDrawer", "DiffusionLatentDrawer", "DreamConfig",
           "DreamResult", "EditClipConfig", "EditClipResult", "FourierDrawer", "GANDrawer",
           "Mp4Writer", "PixelArtDrawer", "PixelDrawer", "STYLE_PRESETS", "WeightedPrompt",
           "augmented_cutouts", "build_drawer", "dream", "edit_clip", "parse_prompts",
           "reproduce_from_recipe", "save_gif", "save_mp4"]
