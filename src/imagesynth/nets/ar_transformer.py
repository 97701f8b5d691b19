"""A decoder-only transformer over image tokens, conditioned on a caption prefix (nanoGPT-style).

Blocks are nanoGPT's (Karpathy 2022): pre-LN, causal multi-head self-attention, a GELU MLP,
learned absolute position embeddings and GPT-2's init (residual projections scaled by
1/sqrt(2 L)). As in DALL-E (Ramesh et al. 2021), text and image tokens form one stream: the
caption enters as a *prefix* of projected MiniLM token states [T, 384] -> [T, C], followed by a
start token and the image tokens, so a single attention type handles both. A prefix instead of
cross-attention because it needs no second attention per block, is how DALL-E conditions, and
at T <= 16 caption tokens against 64 image tokens costs little; padded caption positions are
masked as keys, and text and image carry separate position tables, so how much a batch pads
its captions changes nothing.

`forward(tokens, cond, cache)` returns the logits of the *next* image token at every new
position: without a cache, tokens [B, L] (L < N) give [B, L + 1, V], row j the distribution of
image token j given tokens[:, :j]. With a `KVCache` the first call (empty cache) is the same;
later calls take only the new tokens [B, l] and return [B, l, V], reusing the stored keys and
values, so drawing N tokens costs O(N) positions instead of O(N^2). `draw_tokens` samples a
grid with it (classifier-free guidance on logits, temperature, top-k, top-p), each sample's
tokens from its own generator.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError


class KVCache:
    """Keys and values of every position seen so far, per layer; one per sampling run."""

    def __init__(self):
        self.keys: list[torch.Tensor] = []  # per layer [B, H, capacity, head_dim]
        self.values: list[torch.Tensor] = []
        self.key_mask: torch.Tensor | None = None  # [B, capacity] bool, True = attendable
        self.length = 0  # positions stored (prefix + image stream)
        self.image_length = 0  # positions of the image stream stored (start token included)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int,
              capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, H, l, hd] at positions start.. and return all keys/values so far."""
        if layer == len(self.keys):  # first call: preallocate, so later steps never re-copy
            shape = (k.shape[0], k.shape[1], capacity, k.shape[3])
            self.keys.append(k.new_empty(shape))
            self.values.append(v.new_empty(shape))
        end = start + k.shape[2]
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention over allowed keys (causal and not padding), nanoGPT's layout."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, layer: int,
                cache: KVCache | None, start: int, capacity: int) -> torch.Tensor:
        """x [B, l, C] at positions start..start+l; allowed [B, 1, l, S] bool."""
        b, l, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (t.view(b, l, self.heads, c // self.heads).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.store(layer, k, v, start, capacity)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(b, l, c)))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x, allowed, layer, cache, start, capacity):
        """One block over the new positions (see `CausalSelfAttention.forward`)."""
        x = x + self.attn(self.ln_1(x), allowed, layer, cache, start, capacity)
        return x + self.mlp(self.ln_2(x))


class ARTransformer(nn.Module):
    """p(token_j | caption, tokens_<j) over a grid of `num_tokens` image words (module docstring)."""

    def __init__(self, vocab_size: int, num_tokens: int, width: int = 256, depth: int = 6,
                 heads: int = 8, text_dim: int = 384, max_text_tokens: int = 32,
                 dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ConfigError(f"width {width} must be divisible by heads {heads}", field="heads")
        self.vocab_size, self.num_tokens = vocab_size, num_tokens
        self.text_dim, self.max_text_tokens = text_dim, max_text_tokens
        self.start_token = vocab_size  # one extra embedding row: the start-of-image token
        self.token_embedding = nn.Embedding(vocab_size + 1, width)
        # image stream positions: start token at 0, image token k at k + 1 (token N-1 is never input)
        self.image_position = nn.Parameter(torch.zeros(num_tokens, width))
        self.text_projection = nn.Linear(text_dim, width)
        self.text_position = nn.Parameter(torch.zeros(max_text_tokens, width))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, parameter in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                # GPT-2: residual projections scaled so the stream's variance grows like 1, not L
                nn.init.normal_(parameter, std=0.02 / math.sqrt(2 * depth))
        for parameter in (self.image_position, self.text_position):
            nn.init.normal_(parameter, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def _prefix(self, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """(states [B, T, D], mask [B, T]) -> projected prefix [B, T, C] and bool key mask."""
        if cond is None:
            raise ConfigError("the first call needs the caption prefix", field="cond",
                              fix="pass (states, mask); the empty caption for unconditional")
        states, mask = cond
        if states.ndim != 3 or states.shape[2] != self.text_dim or \
                not 0 < states.shape[1] <= self.max_text_tokens:
            raise ConfigError(f"expected caption states [B, 1..{self.max_text_tokens}, "
                              f"{self.text_dim}], got {tuple(states.shape)}", field="cond")
        prefix = self.text_projection(states) + self.text_position[:states.shape[1]]
        return prefix, mask.bool()

    def forward(self, tokens: torch.Tensor, cond=None, cache: KVCache | None = None):
        """Next-token logits at every new position (module docstring); float32 [B, l, V]."""
        b, l = tokens.shape
        first = cache is None or cache.length == 0
        if first:
            if l >= self.num_tokens:
                raise ConfigError(f"at most {self.num_tokens - 1} known tokens, got {l}",
                                  field="tokens")
            prefix, text_mask = self._prefix(cond)
            stream = torch.cat([tokens.new_full((b, 1), self.start_token), tokens], 1)
            x = torch.cat([prefix, self.token_embedding(stream)
                           + self.image_position[:l + 1]], 1)
            key_mask = torch.cat([text_mask, text_mask.new_ones(b, l + 1)], 1)  # [B, S]
            start, text_length, image_start = 0, prefix.shape[1], 0
            capacity = text_length + self.num_tokens
            if cache is not None:
                cache.key_mask = torch.cat([key_mask, key_mask.new_ones(
                    b, capacity - key_mask.shape[1])], 1)
        else:
            image_start = cache.image_length
            if image_start + l > self.num_tokens:
                raise ConfigError(f"the image has only {self.num_tokens} tokens", field="tokens")
            x = self.token_embedding(tokens) + self.image_position[image_start:image_start + l]
            start, text_length = cache.length, cache.length - image_start
            capacity = cache.key_mask.shape[1]
            key_mask = cache.key_mask[:, :start + x.shape[1]]
        new = x.shape[1]
        positions = torch.arange(start + new, device=x.device)
        queries = positions[start:]
        # A key is visible if it is not after the query and is a real token; a query also sees
        # itself, so even a padded prefix row has one key (its output is never read).
        allowed = (positions[None] <= queries[:, None])[None] & \
            (key_mask[:, None, :] | (positions[None] == queries[:, None])[None])  # [B, new, S]
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, allowed[:, None], layer, cache, start, capacity)
        if cache is not None:
            cache.length = start + new
            cache.image_length = image_start + (new - text_length if first else new)
        image_part = x[:, text_length:] if first else x
        return self.head(self.ln_f(image_part)).float()


def pad_condition(cond: tuple[torch.Tensor, torch.Tensor], length: int):
    """(states [B, T, D], mask [B, T]) zero-padded to `length` tokens."""
    states, mask = cond
    extra = length - states.shape[1]
    return F.pad(states, (0, 0, 0, extra)), F.pad(mask.bool(), (0, extra))


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """logits [n, V] / temperature, with all but the top-k and the top-p nucleus set to -inf."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        # nucleus (Holtzman et al. 2020): the smallest set of tokens holding mass >= p
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs >= top_p  # the mass before it already reaches p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    return logits


def draw_next(logits: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row: row i drawn with `generators[i]` alone (batching never changes it)."""
    probs = logits.softmax(-1)
    picks = [torch.multinomial(probs[i].to(g.device), 1, generator=g)
             for i, g in enumerate(generators)]
    return torch.cat(picks).to(logits.device)


@torch.no_grad()
def draw_tokens(transformer: ARTransformer, cond, generators: Sequence[torch.Generator], *,
                uncond=None, guidance_scale: float = 1.0, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None,
                use_cache: bool = True) -> torch.Tensor:
    """Token grids [n, N] in raster order; with `uncond`, CFG on logits l_u + s (l_c - l_u).

    `cond`/`uncond` are (states [n, T, D], mask [n, T]); `use_cache=False` recomputes every
    prefix (quadratic, the reference the KV cache is tested against).
    """
    n = len(generators)
    if uncond is not None:  # one batch of 2n: conditional rows first, then unconditional
        length = max(cond[0].shape[1], uncond[0].shape[1])
        (cs, cm), (us, um) = pad_condition(cond, length), pad_condition(uncond, length)
        cond = (torch.cat([cs, us]), torch.cat([cm, um]))
    copies = 1 if uncond is None else 2
    tokens = torch.zeros(n, 0, dtype=torch.long, device=cond[0].device)
    cache = KVCache() if use_cache else None
    for j in range(transformer.num_tokens):
        if cache is not None and j > 0:  # only the newest token: the rest is in the cache
            logits = transformer(tokens[:, -1:].repeat(copies, 1), None, cache)[:, -1]
        else:
            logits = transformer(tokens.repeat(copies, 1), cond, cache)[:, -1]
        if uncond is not None:
            cond_logits, uncond_logits = logits.chunk(2)
            logits = uncond_logits + guidance_scale * (cond_logits - uncond_logits)
        next_token = draw_next(filter_logits(logits, temperature, top_k, top_p), generators)
        tokens = torch.cat([tokens, next_token[:, None]], 1)
    return tokens
