"""CLIP: contrastive text–image models, their training, and the scorer interface."""

from ..scorers import Scorer
from .scorer import CLIPScorer, load_clip

__all__ = ["CLIPScorer", "Scorer", "load_clip"]
