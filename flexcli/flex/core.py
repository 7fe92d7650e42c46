"""The flex core: one forward pass for every DiT family, at any patch size (paper §3), plain or packed (App. B.2).

A family (`flexcli.models.dit.DiT`, ...) subclasses `FlexModel` and supplies four things:
* tokenize:      its patch-embedding convolution (`flex_spec.tokenizer`) and `positions(patch, grid)`;
* condition:     `condition(t, cond)`, e.g. timestep + class label, or timestep + text;
* blocks:        `run_blocks(h, conds, spans)`; every layer that depends on the patch size takes the spans;
* de-tokenize:   `head(h, conds, spans)` (final norm and modulation), then its linear `flex_spec.detokenizer`.
`FlexModel` owns the rest: the patch-size bookkeeping, tokenizer and de-tokenizer weights at every size, the
size embedding and unpatchify; `forward_packed` runs several token sequences through the SAME blocks with a
block-diagonal mask. `flexify_model` adds the weak sizes: `FlexParts` (per-size tokenizers,
de-tokenizers, size embeddings, positions) plus per-size LoRAs or norms inside the blocks.

Patch sizes are tuples inside (`(p_h, p_w)`, `(p_f, p_h, p_w)`); a square 2-D patch is named by an int, as
the DiT literature does (4 = (4, 4)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from flexcli.flex import layers as L
from flexcli.flex.packing import Spans
from flexcli.flex.resize import (as_patch, bilinear_matrix, patch_key, pi_resize_matrix, resize_kernel,
                                 resize_rows, underlying_projection)

MODES = ("lora", "shared")
_CONV = {2: F.conv2d, 3: F.conv3d}


@dataclass(frozen=True)
class FlexSpec:
    """Where a family keeps the parts flexify works on (module names)."""

    tokenizer: str  # the patch-embedding Conv2d/Conv3d
    detokenizer: str  # the de-embedding Linear (D -> prod(p) * out_channels)
    lora_targets: tuple[str, ...]  # block linears that get per-size LoRAs (name suffixes)
    norms: tuple[str, ...]  # block norms that get per-size affines in shared mode (name suffixes)
    optional_lora_targets: dict = field(default_factory=dict)  # opt-in groups, e.g. {"cross_attn": (...)}

    def targets(self, extra: tuple = ()) -> tuple[str, ...]:
        """The LoRA targets with the opt-in groups named in `extra` (e.g. ("cross_attn",)) added."""
        unknown = [g for g in extra if g not in self.optional_lora_targets]
        if unknown:
            raise ValueError(f"no optional LoRA target group {unknown[0]!r} (this family has "
                             f"{sorted(self.optional_lora_targets) or 'none'})")
        return self.lora_targets + tuple(t for g in extra for t in self.optional_lora_targets[g])


def public_patch(p: tuple[int, ...]):
    """The user-facing name of a patch: an int for a square 2-D patch, else the tuple."""
    return p[0] if len(p) == 2 and p[0] == p[1] else p


def underlying_patch(base: tuple, ndim: int) -> tuple:
    """p' of §3.1 / App. C.2: 4 for images; for video the base patch doubled in space."""
    return (4, 4) if ndim == 2 else (base[0], 2 * base[1], 2 * base[2])


class FlexParts(nn.Module):
    """What flexify adds around the blocks: per weak size a tokenizer, a de-tokenizer, a size embedding and
    positions (LoRA mode); or one underlying tokenizer/de-tokenizer on the p' grid projected to every size by
    fixed matrices, stored as the lift of the pretrained weights plus a trainable delta (shared mode)."""

    def __init__(self, mode: str, base: tuple, weak: list[tuple], out_channels: int, tokenizer: nn.Module,
                 detokenizer: nn.Linear, positions: dict, lora_rank: int = 32, lora_alpha: float | None = None,
                 lora_targets: tuple = ()):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode, self.base_patch, self.weak = mode, base, weak
        self.lora_rank, self.lora_alpha = int(lora_rank), float(lora_alpha if lora_alpha is not None else lora_rank)
        self.out_channels, self.lora_targets, self.merged = out_channels, tuple(lora_targets), False
        D, C = tokenizer.weight.shape[:2]
        like = {"device": tokenizer.weight.device, "dtype": tokenizer.weight.dtype}  # new weights sit by the old
        self.size_embed = nn.ParameterDict({patch_key(p): nn.Parameter(torch.zeros(D, **like)) for p in weak})
        for p, table in positions.items():
            self.register_buffer(f"pos_{patch_key(p)}", table.to(**like), persistent=False)
        w_tok, b_tok = tokenizer.weight.data, tokenizer.bias.data
        w_de, b_de = detokenizer.weight.data, detokenizer.bias.data
        if mode == "lora":
            conv = {2: nn.Conv2d, 3: nn.Conv3d}[len(base)]
            self.embed_layers, self.de_embed_layers = nn.ModuleDict(), nn.ModuleDict()
            for p in weak:
                tok = conv(C, D, kernel_size=p, stride=p, **like)
                tok.weight.data.copy_(resize_kernel(w_tok.double(), pi_resize_matrix(base, p), p))
                tok.bias.data.copy_(b_tok)
                de = nn.Linear(D, math.prod(p) * out_channels, **like)
                up = bilinear_matrix(base, p)
                de.weight.data.copy_(resize_rows(w_de.double(), up, out_channels))
                de.bias.data.copy_(resize_rows(b_de.double(), up, out_channels))
                self.embed_layers[patch_key(p)], self.de_embed_layers[patch_key(p)] = tok, de
            return
        u = underlying_patch(base, len(base))
        self.embed_delta = nn.Parameter(torch.zeros(D, C, *u, **like))
        self.de_embed_weight_delta = nn.Parameter(torch.zeros(math.prod(u) * out_channels, D, **like))
        self.de_embed_bias_delta = nn.Parameter(torch.zeros(math.prod(u) * out_channels, **like))
        for p in [base, *weak]:
            key = patch_key(p)
            q_tok = underlying_projection(pi_resize_matrix(base, p), pi_resize_matrix(u, p), pi_resize_matrix(base, u))
            q_de = underlying_projection(bilinear_matrix(base, p), bilinear_matrix(u, p), bilinear_matrix(base, u))
            for name, m in (("embed_target", pi_resize_matrix(base, p)), ("embed_q", q_tok),  # float32 always
                            ("de_embed_target", bilinear_matrix(base, p)), ("de_embed_q", q_de)):
                self.register_buffer(f"{name}_{key}", m.to(like["device"], torch.float32), persistent=False)

    @property
    def weak_patch_sizes(self) -> list:
        return [public_patch(p) for p in self.weak]

    @property
    def patch_sizes(self) -> list:
        return [public_patch(self.base_patch), *self.weak_patch_sizes]

    def describe(self) -> dict:
        d = {"mode": self.mode, "patch_sizes": self.patch_sizes, "base_patch_size": public_patch(self.base_patch)}
        if self.mode == "lora":
            d["lora"] = {"rank": self.lora_rank, "alpha": self.lora_alpha, "targets": list(self.lora_targets)}
        else:
            d["underlying_patch_size"] = public_patch(underlying_patch(self.base_patch, len(self.base_patch)))
        return d

    def tokenizer_weights(self, p: tuple, w0: torch.Tensor, b0: torch.Tensor):
        """The tokenizer kernel and bias at size p, given the pretrained ones."""
        key = patch_key(p)
        if self.mode == "lora":
            return (w0, b0) if p == self.base_patch else (self.embed_layers[key].weight, self.embed_layers[key].bias)
        w = w0 if p == self.base_patch else resize_kernel(w0, getattr(self, f"embed_target_{key}"), p)
        return w + resize_kernel(self.embed_delta, getattr(self, f"embed_q_{key}"), p), b0

    def detokenizer_weights(self, p: tuple, w0: torch.Tensor, b0: torch.Tensor):
        """The de-tokenizer weight and bias at size p, given the pretrained ones."""
        key = patch_key(p)
        if self.mode == "lora":
            layer = self.de_embed_layers[key] if p != self.base_patch else None
            return (w0, b0) if layer is None else (layer.weight, layer.bias)
        c, t, q = self.out_channels, getattr(self, f"de_embed_target_{key}"), getattr(self, f"de_embed_q_{key}")
        w, b = (w0, b0) if p == self.base_patch else (resize_rows(w0, t, c), resize_rows(b0, t, c))
        return w + resize_rows(self.de_embed_weight_delta, q, c), b + resize_rows(self.de_embed_bias_delta, q, c)


class FlexModel(nn.Module):
    """Base class of every family: forward(x, t, cond, patch_size) at any of its patch sizes."""

    flex_spec: FlexSpec
    flex: FlexParts | None  # set by the family (None), then by flexify_model

    # -- supplied by the family -------------------------------------------------------------------------
    base_patch: tuple
    out_channels: int

    def condition(self, t: torch.Tensor, cond: Any):
        raise NotImplementedError

    def positions(self, patch: tuple, grid: tuple) -> torch.Tensor | None:
        """The additive positional table (1, T, D) of a token grid, or None (rotary positions)."""
        raise NotImplementedError

    def weak_positions(self, patch: tuple) -> torch.Tensor | None:
        """A weak size's positional table, computed once by flexify (kept in `flex`), or None."""
        return None

    def run_blocks(self, h: torch.Tensor, conds: list, spans: Spans) -> torch.Tensor:
        raise NotImplementedError

    def head(self, h: torch.Tensor, conds: list, spans: Spans) -> torch.Tensor:
        raise NotImplementedError

    # A text-conditional family (`cond` is a TextCondition) also gives the sampler `text_width` (the caption
    # embedding width its projection takes), `text_length` (tokens per caption) and `learned_null_caption()`
    # ((L, C) tensor, e.g. PixArt's y_embedding, or None: guidance then encodes a negative prompt).

    @staticmethod
    def cat_conditions(conds: list):
        """Stack per-sample conditionings along the batch: class labels (tensors) or `TextCondition`s."""
        return conds[0].cat(conds) if hasattr(conds[0], "cat") else torch.cat(conds)

    # -- shared -------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> nn.Module:
        return self.get_submodule(self.flex_spec.tokenizer)

    @property
    def detokenizer(self) -> nn.Linear:
        return self.get_submodule(self.flex_spec.detokenizer)

    @property
    def patch_sizes(self) -> list:
        """Every patch size this model runs at, the pretrained one first."""
        return self.flex.patch_sizes if self.flex is not None else [public_patch(self.base_patch)]

    def resolve_patch_size(self, patch_size, x: torch.Tensor) -> tuple:
        """The patch size as a tuple, checked against the model's sizes and the input's shape."""
        p = self.base_patch if patch_size is None else as_patch(patch_size, len(self.base_patch))
        if public_patch(p) not in self.patch_sizes:
            raise ValueError(f"patch size {public_patch(p)} is not supported by this model "
                             f"(supported: {self.patch_sizes})")
        spatial = tuple(x.shape[2:])
        if any(s % q for s, q in zip(spatial, p)):
            raise ValueError(f"input of spatial size {spatial} is not divisible by patch size {public_patch(p)}")
        return p

    def tokenizer_weights(self, p) -> tuple[torch.Tensor, torch.Tensor]:
        tok, p = self.tokenizer, as_patch(p, len(self.base_patch))
        if self.flex is None:
            return tok.weight, tok.bias
        return self.flex.tokenizer_weights(p, tok.weight, tok.bias)

    def detokenizer_weights(self, p) -> tuple[torch.Tensor, torch.Tensor]:
        de, p = self.detokenizer, as_patch(p, len(self.base_patch))
        if self.flex is None:
            return de.weight, de.bias
        return self.flex.detokenizer_weights(p, de.weight, de.bias)

    def tokenize(self, x: torch.Tensor, p: tuple) -> torch.Tensor:
        """(N, C, *S) -> (N, T, D): patch embedding, positions, and the size embedding of a weak size."""
        w, b = self.tokenizer_weights(p)
        h = _CONV[len(p)](x, w, b, stride=p)  # (N, D, *grid)
        grid = tuple(h.shape[2:])
        h = h.flatten(2).transpose(1, 2)
        pos = self.positions(p, grid)
        if pos is not None:
            h = h + pos
        if p != self.base_patch:
            h = h + self.flex.size_embed[patch_key(p)]
        return h

    def detokenize(self, h: torch.Tensor, p: tuple, spatial: tuple) -> torch.Tensor:
        """(N, T, D) -> (N, out_channels, *S): the de-embedding linear, then unpatchify."""
        w, b = self.detokenizer_weights(p)
        return unpatchify(F.linear(h, w, b), p, spatial, self.out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any, patch_size=None) -> torch.Tensor:
        """x: (N, C, *S) latents, t: (N,) timesteps, cond: the family's conditioning -> (N, out_channels, *S)."""
        p = self.resolve_patch_size(patch_size, x)
        h = self.tokenize(x, p)  # (N, T, D)
        conds = [self.condition(t, cond)]
        spans = Spans.single(p, h.shape[1], grid_of(x, p))
        h = self.head(self.run_blocks(h, conds, spans), conds, spans)
        return self.detokenize(h, p, tuple(x.shape[2:]))


@torch.no_grad()
def forward_packed(model: FlexModel, segments: list) -> list[torch.Tensor]:
    """One forward pass over segments (x, t, cond, patch_size) of the same batch, packed into one sequence per
    sample with a block-diagonal mask (App. B.2), through the model's own blocks -> one output per segment."""
    if not segments:
        return []
    if any(s[0].shape[0] != segments[0][0].shape[0] for s in segments):
        raise ValueError("all packed segments need the same batch size")
    sizes = [model.resolve_patch_size(p, x) for x, _, _, p in segments]
    tokens = [model.tokenize(x, p) for (x, *_), p in zip(segments, sizes)]
    conds = [model.condition(t, c) for _, t, c, _ in segments]
    spans = Spans(tuple(sizes), tuple(h.shape[1] for h in tokens),
                  tuple(grid_of(x, p) for (x, *_), p in zip(segments, sizes)))
    h = model.head(model.run_blocks(torch.cat(tokens, dim=1), conds, spans), conds, spans)
    return [model.detokenize(h[:, a:b], p, tuple(x.shape[2:]))
            for (a, b), (x, *_), p in zip(spans.bounds, segments, sizes)]


def grid_of(x: torch.Tensor, p: tuple) -> tuple:
    """The token grid of latents x (N, C, *S) cut into patches p."""
    return tuple(s // q for s, q in zip(x.shape[2:], p))


def unpatchify(h: torch.Tensor, p: tuple, spatial: tuple, channels: int) -> torch.Tensor:
    """(N, T, prod(p) * C) -> (N, C, *S); the de-embedding's output index is (patch pixel, channel)."""
    n, k = h.shape[0], len(p)
    grid = [s // q for s, q in zip(spatial, p)]
    h = h.reshape(n, *grid, *p, channels)
    order = [0, 2 * k + 1] + [i for a in range(k) for i in (1 + a, 1 + k + a)]  # N, C, g1, p1, g2, p2, ...
    return h.permute(*order).reshape(n, channels, *spatial)


# ---------------------------------------------------------------------------------------------------------
def flexify_model(model: FlexModel, weak_patch_sizes: list, mode: str = "lora", lora_rank: int = 32,
                  lora_alpha: float | None = None, lora_targets: tuple | None = None) -> FlexModel:
    """Add weak patch sizes to a pretrained model in place (and return it). Every weak size is initialised from
    the pretrained one, never chained: PI-resized tokenizer, up-sampled de-tokenizer, positions at patch
    centres, a zero size embedding, zero-output LoRAs (lora) or identity norm affines (shared).
    `lora_targets` replaces the family's default targets (`FlexSpec.targets` adds its opt-in groups)."""
    if model.flex is not None:
        raise ValueError("model is already flexified")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    spec, base = model.flex_spec, model.base_patch
    targets = tuple(lora_targets) if lora_targets is not None else spec.lora_targets
    weak = sorted({as_patch(p, len(base)) for p in weak_patch_sizes})
    positions = {p: model.weak_positions(p) for p in weak}
    model.flex = FlexParts(mode, base, weak, model.out_channels, model.tokenizer, model.detokenizer,
                           {p: t for p, t in positions.items() if t is not None}, lora_rank, lora_alpha,
                           targets)
    if mode == "lora":
        for param in model.parameters():
            param.requires_grad_(False)
        L.inject_loras(model, targets, weak, model.flex.lora_rank, model.flex.lora_alpha)
        for name, param in model.named_parameters():
            param.requires_grad_(".lora_" in name or name.startswith("flex."))
    else:
        for param in (model.tokenizer.weight, model.detokenizer.weight, model.detokenizer.bias):
            param.requires_grad_(False)  # the pretrained weights only seed the underlying ones: the deltas train
        L.replace_norms(model, spec.norms, [base, *weak], model.tokenizer.weight)  # DiT's norms have no affine
    return model
