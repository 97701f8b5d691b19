"""CLIP applications: zero-shot classification, a semantic image-search index, CLIP score."""

from ..clip.foreign import load_scorer
from .contact_sheet import write_contact_sheet
from .embedding import DEFAULT_MODEL, default_model_spec, embed_image_files, resolve_scorer
from .scoring import score_images
from .search_index import IndexReport, SearchIndex, SearchResult
from .zeroshot import Classification, LabelScore, classify_images, parse_labels

__all__ = ["DEFAULT_MODEL", "Classification", "IndexReport", "LabelScore", "SearchIndex",
           "SearchResult", "classify_images", "default_model_spec", "embed_image_files",
           "load_scorer", "parse_labels", "resolve_scorer", "score_images",
           "write_contact_sheet"]
