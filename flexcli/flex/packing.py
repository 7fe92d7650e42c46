"""Packed forward passes (paper §3.4, App. B.2, Fig. 12): token sequences of different patch sizes share one
sequence per row, separated by a block-diagonal attention mask.

`forward_packed(model, segments)` takes segments (x, t, y, patch_size) with the same batch N. Row n of the
packed batch is the concatenation of every segment's sample n (e.g. image n's conditional tokens at p=2 and
its guidance tokens at p=4: Fig. 12's approach 4). Everything that depends on the segment is applied per
token span:
* the embedding, positional and patch-size embeddings, de-embedding and unpatchify: per segment;
* adaLN modulation: per token (each span gets its own segment's (shift, scale, gate));
* LoRA (peft) layers: the frozen base linear runs once on the packed sequence, each span adds its own
  patch size's LoRA; merged LoRAs (per-size weight copies) run per span; patch-size LayerNorm affines per span;
* attention: one SDPA call on the packed sequence with a block-diagonal boolean mask. Computed densely, it
  costs (sum T)^2 per row, not sum T^2: `flexcli.profiling.flops.packed_forward_cost` records both.

The outputs equal separate forward passes up to float round-off (tested to 1e-5).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from flexcli.flex.lora import MergedLoraLinear
from flexcli.flex.norms import PatchSizeLayerNorm

Segment = tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]  # x (N, C, H, W), t (N,), y (N,), patch size


def block_diagonal_mask(lengths: list[int], device=None) -> torch.Tensor:
    """(T, T) boolean mask, True where attention is allowed (within a segment)."""
    ids = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(lengths)]).to(device)
    return ids[:, None] == ids[None, :]


class _Packed:
    """The spans of a packed sequence and helpers that apply a layer span by span."""

    def __init__(self, model, sizes: list[int], lengths: list[int]):
        self.model, self.sizes, self.lengths = model, sizes, lengths
        self.bounds = []
        start = 0
        for n in lengths:
            self.bounds.append((start, start + n))
            start += n

    def per_span(self, fn, h: torch.Tensor) -> torch.Tensor:
        outs = []
        for (a, b), p in zip(self.bounds, self.sizes):
            with self.model.patch_mode(p):
                outs.append(fn(h[:, a:b]))
        return torch.cat(outs, dim=1)

    def linear(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        from peft.tuners.lora import LoraLayer

        if isinstance(layer, LoraLayer):
            base = layer.get_base_layer()
            out = base(h)
            deltas = []
            for (a, b), p in zip(self.bounds, self.sizes):
                name = f"p{p}"
                x = h[:, a:b]
                if name in layer.lora_A:
                    x = x.to(layer.lora_A[name].weight.dtype)
                    deltas.append(layer.lora_B[name](layer.lora_A[name](layer.lora_dropout[name](x)))
                                  * layer.scaling[name])
                else:
                    deltas.append(None)
            if all(d is None for d in deltas):
                return out
            pieces = [out[:, a:b] if d is None else out[:, a:b] + d for (a, b), d in zip(self.bounds, deltas)]
            return torch.cat(pieces, dim=1)
        if isinstance(layer, MergedLoraLinear):
            return self.per_span(layer, h)
        return layer(h)

    def norm(self, norm: nn.Module, h: torch.Tensor) -> torch.Tensor:
        if isinstance(norm, PatchSizeLayerNorm):
            return self.per_span(norm, h)
        return norm(h)


def _expand(mods: list[torch.Tensor], lengths: list[int]) -> torch.Tensor:
    """Per-segment (N, K) vectors -> per-token (N, sum T, K)."""
    return torch.cat([m.unsqueeze(1).expand(-1, n, -1) for m, n in zip(mods, lengths)], dim=1)


def _attention(pk: _Packed, attn, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    B, T, D = h.shape
    qkv = pk.linear(attn.qkv, h).reshape(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return pk.linear(attn.proj, x.transpose(1, 2).reshape(B, T, D))


def _mlp(pk: _Packed, mlp, h: torch.Tensor) -> torch.Tensor:
    return pk.linear(mlp.fc2, mlp.act(pk.linear(mlp.fc1, h)))


@torch.no_grad()
def forward_packed(model, segments: list[Segment]) -> list[torch.Tensor]:
    """One packed forward pass over segments of (possibly) different patch sizes -> one output per segment."""
    if not segments:
        return []
    n = segments[0][0].shape[0]
    if any(s[0].shape[0] != n for s in segments):
        raise ValueError("all packed segments need the same batch size")
    sizes = [model.resolve_patch_size(p, x) for x, _, _, p in segments]
    tokens, conds = [], []
    for (x, t, y, _), p in zip(segments, sizes):
        with model.patch_mode(p):
            tokens.append(model.embed(x, p))
        conds.append(model.t_embedder(t) + model.y_embedder(y, False))
    lengths = [h.shape[1] for h in tokens]
    pk = _Packed(model, sizes, lengths)
    h = torch.cat(tokens, dim=1)  # (N, sum T, D)
    mask = block_diagonal_mask(lengths, h.device)
    for block in model.blocks:
        mods = _expand([block.adaLN_modulation(c) for c in conds], lengths)  # (N, T, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=2)
        a = pk.norm(block.norm1, h) * (1 + scale_msa) + shift_msa
        h = h + gate_msa * _attention(pk, block.attn, a, mask)
        m = pk.norm(block.norm2, h) * (1 + scale_mlp) + shift_mlp
        h = h + gate_mlp * _mlp(pk, block.mlp, m)
    fl = model.final_layer
    shift, scale = _expand([fl.adaLN_modulation(c) for c in conds], lengths).chunk(2, dim=2)
    h = pk.norm(fl.norm_final, h) * (1 + scale) + shift
    outs = []
    for (a, b), (x, _, _, _), p in zip(pk.bounds, segments, sizes):
        with model.patch_mode(p):
            out = model.de_embed(h[:, a:b], p)
        outs.append(model.unpatchify(out, p, x.shape[-2], x.shape[-1]))
    return outs
