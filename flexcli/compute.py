"""The one compute model: exact multiply-accumulates (MACs) of forward passes, sampling steps and schedules.

Convention: the matmuls and convolutions of the denoiser only (the DiT paper's "Gflops" are these MACs;
FLOPs = 2 x MACs), per sample. Counted: the tokenizer, the conditioning MLPs, every modulation linear, the
block linears, attention (Q K^T and A V: 2 T^2 D per block), the de-tokenizer, unmerged LoRAs (r (d_in + d_out)
per token per adapted layer) and, in shared mode, the fixed projections of the underlying tokenizer weights.
Not counted: norms, activations, softmax, additions (the convention of torch.utils.flop_counter).

What depends on the family (its blocks) is its `FamilyCost` (`flexcli.families`); everything else (batches,
LoRA rank and merging, shared mode, guidance, packing, schedules) is here once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from flexcli.families import FamilyCost, family_of
from flexcli.flex.core import underlying_patch
from flexcli.flex.resize import as_patch

StepCost = Callable[[object, "object | None"], int]  # (p_cond, p_uncond or None) -> MACs of one step


@dataclass(frozen=True)
class ForwardCost:
    patch_size: object
    tokens: int
    macs: int  # for the whole batch
    breakdown: dict

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def gflops(self) -> float:
        return self.flops / 1e9


def family_cost(cfg) -> FamilyCost:
    return family_of(cfg).cost


def base_patch_of(cfg) -> tuple:
    p = cfg.patch_size
    return as_patch(p, 2) if isinstance(p, int) else tuple(p)


def forward_cost(cfg, patch_size=None, batch: int = 1, *, lora_rank: int = 0, shared_projection: bool = False,
                 input_size=None, lora_targets: tuple | None = None) -> ForwardCost:
    """MACs of `batch` forward passes at `patch_size` (unmerged LoRAs of `lora_rank` if > 0, on `lora_targets`,
    default the family's).

    `input_size` is the latent side, or its spatial shape ((H, W), or (F, H, W) for video); default the config's.
    """
    fam, p0 = family_cost(cfg), base_patch_of(cfg)
    p = p0 if patch_size is None else as_patch(patch_size, len(p0))
    side = input_size if input_size is not None else fam.spatial(cfg)
    spatial = (side,) * len(p) if isinstance(side, int) else tuple(side)
    if any(s % q for s, q in zip(spatial, p)):
        raise ValueError(f"patch size {patch_size or cfg.patch_size} does not divide the latent size {side}")
    T = math.prod(s // q for s, q in zip(spatial, p))
    b = fam.terms(cfg, p, T)
    if lora_rank and p != p0:
        if fam.lora_macs is not None:
            b["lora"] = lora_rank * fam.lora_macs(cfg, T, lora_targets or family_of(cfg).model.flex_spec.lora_targets)
        else:
            b["lora"] = cfg.depth * T * lora_rank * sum(i + o for i, o in fam.lora_dims(cfg))
    macs = batch * sum(b.values())
    if shared_projection:  # weight-side, once per forward call whatever the batch
        D, C, Co = fam.io_dims(cfg)
        u = underlying_patch(p0, len(p0))
        target = 0 if p == p0 else math.prod(p) * math.prod(p0)
        b["weight_projection"] = (D * C + D * Co + Co) * (target + math.prod(p) * math.prod(u))
        macs += b["weight_projection"]
    public = p[0] if len(p) == 2 and p[0] == p[1] else p
    return ForwardCost(public, T, macs, {k: v * (1 if k == "weight_projection" else batch) for k, v in b.items()})


def packed_forward_cost(cfg, patch_sizes: list, batch: int = 1, *, lora_rank: int = 0,
                        shared_projection: bool = False, dense_attention: bool = True,
                        input_size=None, lora_targets: tuple | None = None) -> ForwardCost:
    """MACs of one packed forward pass (App. B.2, Fig. 12; `flexcli.flex.core.forward_packed`).

    Each of the `batch` rows holds one sequence per entry of `patch_sizes`, back to back, with a block-diagonal
    attention mask. Everything but attention costs what separate passes cost (each segment has its own
    conditioning, tokenizer and LoRAs). Attention computed densely over the packed row costs that of
    sum T tokens; `dense_attention=False` is a kernel that skips the masked blocks: the sum over segments.
    Cross-attention to per-segment captions (text families), computed densely, runs every token over every
    segment's caption.
    """
    parts = [forward_cost(cfg, p, batch, lora_rank=lora_rank, shared_projection=shared_projection,
                          input_size=input_size, lora_targets=lora_targets) for p in patch_sizes]
    breakdown: dict = {}
    for c in parts:
        for k, v in c.breakdown.items():
            breakdown[k] = breakdown.get(k, 0) + v
    total_tokens = sum(c.tokens for c in parts)
    if dense_attention:
        fam = family_cost(cfg)
        breakdown["attention"] = batch * fam.attention(cfg, total_tokens)
        if fam.packed_cross_attention is not None:
            breakdown["cross_attention"] = batch * fam.packed_cross_attention(cfg, total_tokens, len(parts))
    return ForwardCost(min(c.patch_size for c in parts), total_tokens, sum(breakdown.values()), breakdown)


# ---------------------------------------------------------------------------------------------------------
def lora_rank_of(model, merged: bool = False) -> int:
    """The rank whose LoRA matmuls a forward pass of `model` runs: 0 unless its LoRAs are unmerged."""
    flex = model.flex
    if flex is None or flex.mode != "lora" or merged or flex.merged:
        return 0
    return flex.lora_rank


def lora_targets_of(model) -> tuple | None:
    return model.flex.lora_targets if model.flex is not None and model.flex.mode == "lora" else None


def model_cost(model, patch_size=None, batch: int = 1, merged: bool = False, input_size=None) -> ForwardCost:
    """`forward_cost` for a built model (its flex mode, LoRA rank, targets and merge state)."""
    shared = model.flex is not None and model.flex.mode == "shared"
    return forward_cost(model.config, patch_size, batch, lora_rank=lora_rank_of(model, merged),
                        shared_projection=shared, input_size=input_size, lora_targets=lora_targets_of(model))


def step_cost_fn(config, *, lora_rank: int = 0, shared: bool = False, packing: str = "separate",
                 dense: bool = True, input_size=None, lora_targets: tuple | None = None) -> StepCost:
    """MACs of one sampling step per sample: (p_cond, p_uncond or None without guidance) -> MACs.

    Both branches at one size run as one forward pass of batch 2; different sizes run as two passes
    ("separate") or one packed pass ("packed": dense attention over the packed row unless dense=False).
    """
    def one(p, batch: int) -> int:
        return forward_cost(config, p, batch, lora_rank=lora_rank, shared_projection=shared,
                            input_size=input_size, lora_targets=lora_targets).macs

    def cost(pc, pu) -> int:
        if pu is None:
            return one(pc, 1)
        if pc == pu:
            return one(pc, 2)
        if packing == "packed":
            return packed_forward_cost(config, [pc, pu], 1, lora_rank=lora_rank, shared_projection=shared,
                                       dense_attention=dense, input_size=input_size,
                                       lora_targets=lora_targets).macs
        return one(pc, 1) + one(pu, 1)
    return cost


def model_step_cost(model, packing: str = "separate", dense: bool = True, input_size=None) -> StepCost:
    """`step_cost_fn` for a built model (on a latent of `input_size`, default the family's)."""
    shared = model.flex is not None and model.flex.mode == "shared"
    return step_cost_fn(model.config, lora_rank=lora_rank_of(model), shared=shared, packing=packing, dense=dense,
                        input_size=input_size, lora_targets=lora_targets_of(model))
