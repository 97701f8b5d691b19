"""Captioned image data sets: ShapesWorld (+ checker), emoji from npm, and users' folders."""

from __future__ import annotations

from .card import BuildSummary, split_for
from .emoji import EmojiConfig, build_emoji_dataset
from .folder import CaptionedImageFolder, FolderReport, Problem
from .shapes import (HELD_OUT_PAIRS, PALETTE, SHAPES, Scene, held_out_prompts, parse_caption,
                     render_scene, sample_scene)
from .shapes_check import CheckResult, check
from .shapes_dataset import ShapesConfig, build_shapes_dataset

__all__ = [
    "BuildSummary", "CaptionedImageFolder", "CheckResult", "EmojiConfig", "FolderReport",
    "HELD_OUT_PAIRS", "PALETTE", "Problem", "SHAPES", "Scene", "ShapesConfig",
    "build_emoji_dataset", "build_shapes_dataset", "check", "held_out_prompts",
    "parse_caption", "render_scene", "sample_scene", "split_for",
]
