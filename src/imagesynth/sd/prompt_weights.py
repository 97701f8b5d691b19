"""Prompt weighting and long prompts for CLIP text encoders, as AUTOMATIC1111's web UI does it.

Syntax (A1111 `modules/prompt_parser.py`): `(x)` multiplies the attention of `x` by 1.1, `[x]`
divides it by 1.1, `(x:1.5)` sets the multiplier, nesting multiplies, `\\(` `\\)` `\\[` `\\]` `\\\\`
are literal characters, brackets left open are closed at the end of the prompt, and the word
`BREAK` starts a new 75-token chunk.

Encoding (A1111 `modules/sd_hijack_clip.py`, "Original" emphasis): each weighted fragment is
tokenized on its own, the tokens are cut into chunks of 75 (at the last comma among a chunk's
final 20 tokens when there is one), each chunk becomes `BOS, tokens, EOS, pad...` (77 ids) and is
encoded alone; its states are multiplied by the token weights and rescaled so that the chunk's
mean is unchanged; the chunks are concatenated along the token axis. A prompt with no weights that
fits one chunk gives exactly what diffusers' `encode_prompt` gives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import ConfigError

#: the marker `parse_prompt_attention` returns where the prompt says BREAK
BREAK = ("BREAK", -1.0)
ROUND_MULTIPLIER = 1.1
#: A1111 multiplies by 1/1.1 (not divides by 1.1): the last bit of the weights depends on it
SQUARE_MULTIPLIER = 1 / 1.1
CHUNK_LENGTH = 75
#: how far back from a chunk's end a comma may be to move the words after it to the next chunk
COMMA_BACKTRACK = 20
HIDDEN_STATES = ("last", "penultimate")

# One lexical unit per match, tried in this order: an escape (a backslash before anything other
# than a bracket or a backslash just vanishes), an opening bracket, an explicit weight that
# closes a round bracket, a closing bracket, a run of plain text, a lone colon.
_UNIT = re.compile(r"""
      \\(?P<escaped>[()\[\]\\]?)
    | (?P<open>[(\[])
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)
    | (?P<close>[)\]])
    | (?P<plain>[^\\()\[\]:]+|:)
""", re.X)
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*", re.S)


@dataclass(frozen=True)
class PromptChunk:
    """One encoder input: 77 token ids (BOS, up to 75 prompt tokens, EOS, padding) and weights."""

    tokens: tuple[int, ...]
    weights: tuple[float, ...]
    #: prompt tokens in the chunk (BOS, EOS and padding not counted)
    length: int

    @property
    def weighted(self) -> bool:
        """Whether any token has a weight other than 1."""
        return any(w != 1.0 for w in self.weights)


def _float_weight(number: str) -> float:
    try:
        return float(number)
    except ValueError:
        raise ConfigError(f"'{number}' is not a number in a '(text:weight)' group", field="prompt",
                          fix="write the weight as one number, e.g. (red:1.3)") from None


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split `text` into (fragment, attention weight) pairs with A1111's bracket syntax."""
    pieces: list[list] = []  # [text, weight, is_break]; weights are scaled in place as groups close
    open_round: list[int] = []  # index into `pieces` where each still-open group starts
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        # BREAK markers keep their -1: in A1111 a BREAK inside brackets is scaled and stops
        # acting as a break (it then reaches CLIP as the word "BREAK" with a negative weight).
        for piece in pieces[start:]:
            if not piece[2]:
                piece[1] *= factor

    for unit in _UNIT.finditer(text):
        if unit.group("escaped") is not None:
            pieces.append([unit.group("escaped"), 1.0, False])
        elif unit.group("open") == "(":
            open_round.append(len(pieces))
        elif unit.group("open") == "[":
            open_square.append(len(pieces))
        elif unit.group("weight") is not None and open_round:
            scale_from(open_round.pop(), _float_weight(unit.group("weight")))
        elif unit.group("close") == ")" and open_round:
            scale_from(open_round.pop(), ROUND_MULTIPLIER)
        elif unit.group("close") == "]" and open_square:
            scale_from(open_square.pop(), SQUARE_MULTIPLIER)
        else:
            # plain text, or a closing bracket / weight with nothing open: kept as written
            for i, part in enumerate(_BREAK_WORD.split(unit.group(0))):
                if i:
                    pieces.append([BREAK[0], BREAK[1], True])
                pieces.append([part, 1.0, False])

    # groups never closed act as if closed at the end: round ones first, outermost first
    for start in open_round:
        scale_from(start, ROUND_MULTIPLIER)
    for start in open_square:
        scale_from(start, SQUARE_MULTIPLIER)

    merged: list[list] = []
    for piece in pieces or [["", 1.0, False]]:
        last = merged[-1] if merged else None
        if last and not last[2] and not piece[2] and last[1] == piece[1]:
            last[0] += piece[0]
        else:
            merged.append(list(piece))
    return [(t, float(w)) for t, w, _ in merged]


def _special_ids(tokenizer) -> tuple[int, int, int]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return bos, eos, pad


def tokenize_weighted_prompt(tokenizer, prompt: str, *, chunk_length: int = CHUNK_LENGTH,
                             comma_backtrack: int = COMMA_BACKTRACK) -> list[PromptChunk]:
    """Cut `prompt` into weighted chunks of `chunk_length + 2` token ids, as A1111 does."""
    if chunk_length < 1 or chunk_length + 2 > tokenizer.model_max_length:
        raise ConfigError(f"chunk length {chunk_length} does not fit the tokenizer's "
                          f"{tokenizer.model_max_length} positions with BOS and EOS",
                          field="chunk_length",
                          fix=f"use 1 to {tokenizer.model_max_length - 2} (75 for CLIP)")
    bos, eos, pad = _special_ids(tokenizer)
    # one lookup, not get_vocab(): that rebuilds a 49,408-entry dict (15-38 ms) on every call
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    comma = None if comma == tokenizer.unk_token_id else comma
    fragments = parse_prompt_attention(prompt)
    # each fragment alone, as A1111 does: a word split by a bracket is two words to the BPE
    ids = tokenizer([text for text, _ in fragments], truncation=False, add_special_tokens=False,
                    verbose=False)["input_ids"]

    chunks: list[PromptChunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close_chunk() -> None:
        nonlocal tokens, weights, last_comma
        fill = chunk_length - len(tokens)
        chunks.append(PromptChunk((bos, *tokens, eos, *[pad] * fill),
                                  (1.0, *weights, 1.0, *[1.0] * fill), len(tokens)))
        tokens, weights, last_comma = [], [], -1

    for (text, weight), fragment_ids in zip(fragments, ids):
        if (text, weight) == BREAK:
            close_chunk()
            continue
        for token in fragment_ids:
            if token == comma:
                last_comma = len(tokens)
            elif (comma_backtrack and len(tokens) == chunk_length and last_comma != -1
                  and len(tokens) - last_comma <= comma_backtrack):
                # the chunk is full: end it after its last comma, the words after move on
                cut = last_comma + 1
                moved = tokens[cut:], weights[cut:]
                tokens, weights = tokens[:cut], weights[:cut]
                close_chunk()
                tokens, weights = list(moved[0]), list(moved[1])
            if len(tokens) == chunk_length:
                close_chunk()
            tokens.append(token)
            weights.append(weight)
    if tokens or not chunks:
        close_chunk()
    return chunks


def _check_options(text_encoder, hidden_state: str, clip_skip: int | None) -> None:
    if hidden_state not in HIDDEN_STATES:
        raise ConfigError(f"unknown hidden state '{hidden_state}'", field="hidden_state",
                          fix="use 'last' (SD1/SD2) or 'penultimate' (SDXL)")
    layers = text_encoder.config.num_hidden_layers
    most = layers - 1 - (hidden_state == "penultimate")
    if clip_skip is not None and not 0 <= clip_skip <= most:
        raise ConfigError(f"clip skip {clip_skip} is outside this {layers}-layer text encoder",
                          field="clip_skip", fix=f"use 0 to {most} or leave it unset")


def _encode_chunk(text_encoder, chunk: PromptChunk, hidden_state: str, clip_skip: int | None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    ids = torch.tensor([chunk.tokens], dtype=torch.long, device=text_encoder.device)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        # the tokenizer's own mask, as diffusers passes it: BOS, tokens and EOS, not the padding
        mask = (torch.arange(ids.shape[1], device=ids.device) < chunk.length + 2).long()[None]
    # mirror diffusers' calls exactly so an unweighted prompt matches its encode_prompt bit for bit
    if hidden_state == "last" and clip_skip is None:
        out = text_encoder(ids, attention_mask=mask)
        states = out[0]
    elif hidden_state == "last":
        out = text_encoder(ids, attention_mask=mask, output_hidden_states=True)
        # transformers 5 puts the layers on CLIPTextModel itself, 4.x under `.text_model`
        final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
        states = final_norm(out.hidden_states[-(clip_skip + 1)])
    else:
        # SDXL: the penultimate layer's states, without the final layer norm
        out = text_encoder(ids, attention_mask=mask, output_hidden_states=True)
        states = out.hidden_states[-((clip_skip or 0) + 2)]
    return states, getattr(out, "text_embeds", None)


def apply_weights(states: torch.Tensor, weights, *, rescale_mean: bool = True) -> torch.Tensor:
    """Multiply token states by their weights and restore the mean (A1111's 'Original' emphasis).

    The mean is restored only when it is not ~0 relative to the states' magnitude: a layer-normed
    encoder can have a mean of ~1e-9, and dividing by it (as A1111 would) gives Inf.
    """
    multipliers = torch.as_tensor(weights, dtype=states.dtype, device=states.device)
    original_mean = states.mean()
    states = states * multipliers.reshape(1, -1, 1)
    new_mean = states.mean()
    if rescale_mean and new_mean.abs() > 1e-4 * states.abs().mean():
        states = states * (original_mean / new_mean)
    return states


def encode_weighted_prompt(text_encoder, tokenizer, prompt: str, *, clip_skip: int | None = None,
                           hidden_state: str = "last", chunk_length: int = CHUNK_LENGTH,
                           comma_backtrack: int = COMMA_BACKTRACK, rescale_mean: bool = True
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode a weighted prompt of any length: (states [1, 77*k, D], pooled from chunk 1 or None).

    `hidden_state="last"`: the final layer's states after the final layer norm (SD1, SD2);
    `"penultimate"`: the layer before, without it (SDXL). `clip_skip` counts skipped layers as
    diffusers does (A1111's "Clip skip: 2" is 1). `pooled` is the `text_embeds` of a
    `CLIPTextModelWithProjection` (SDXL's second encoder), else None. `rescale_mean=False` is
    A1111's "No norm" emphasis. Gradients flow; call under `torch.no_grad()` for inference.
    """
    _check_options(text_encoder, hidden_state, clip_skip)
    chunks = tokenize_weighted_prompt(tokenizer, prompt, chunk_length=chunk_length,
                                      comma_backtrack=comma_backtrack)
    encoded, pooled = [], None
    for i, chunk in enumerate(chunks):
        states, chunk_pooled = _encode_chunk(text_encoder, chunk, hidden_state, clip_skip)
        if i == 0:
            pooled = chunk_pooled  # A1111 keeps the first chunk's pooled output
        # unweighted chunks skip the arithmetic so they stay bit-identical to a plain encoding
        if chunk.weighted:
            states = apply_weights(states, chunk.weights, rescale_mean=rescale_mean)
        encoded.append(states)
    return torch.cat(encoded, dim=1), pooled


def pad_to_same_length(a: torch.Tensor, b: torch.Tensor, empty: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Append copies of `empty` (the encoded empty prompt) to the shorter of `a`, `b` [B, T, D]."""
    if empty.dim() == 2:
        empty = empty[None]
    size = empty.shape[1]
    if a.shape[1] % size or b.shape[1] % size:
        raise ConfigError(f"prompt states of {a.shape[1]} and {b.shape[1]} tokens are not whole "
                          f"{size}-token chunks", field="prompt_embeds",
                          fix="pad states from encode_weighted_prompt with its empty-prompt chunk")
    repeats = (a.shape[1] - b.shape[1]) // size

    def extend(states: torch.Tensor, count: int) -> torch.Tensor:
        filler = empty.to(device=states.device, dtype=states.dtype)
        filler = filler.repeat(states.shape[0], count, 1)
        return torch.cat([states, filler], dim=1)

    if repeats > 0:
        b = extend(b, repeats)
    elif repeats < 0:
        a = extend(a, -repeats)
    return a, b


def encode_prompt_pair(text_encoder, tokenizer, prompt: str, negative_prompt: str = "",
                       **options) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                           torch.Tensor | None]:
    """(cond, uncond, pooled, negative pooled), the token counts made equal with empty chunks."""
    cond, pooled = encode_weighted_prompt(text_encoder, tokenizer, prompt, **options)
    uncond, negative_pooled = encode_weighted_prompt(text_encoder, tokenizer, negative_prompt,
                                                     **options)
    if cond.shape[1] != uncond.shape[1]:
        empty = encode_weighted_prompt(text_encoder, tokenizer, "", **options)[0]
        cond, uncond = pad_to_same_length(cond, uncond, empty)
    return cond, uncond, pooled, negative_pooled
