"""Exact analytic cost of one DiT forward pass, in multiply-accumulates (MACs).

Convention: the matmuls and convolutions of the denoiser only (the DiT paper's "Gflops" are these MACs;
FLOPs = 2 x MACs). Counted: patch embedding, timestep MLP, every adaLN linear, qkv/proj/MLP, attention
(Q K^T and A V: 2 T^2 D), the de-embedding, unmerged LoRAs (r (d_in + d_out) per token per adapted layer)
and, in shared mode, the fixed projections of the underlying embedding weights. Not counted: norms,
activations, softmax, additions (the same convention as torch.utils.flop_counter). Per sample: multiply
by the batch (x2 for classifier-free guidance).
"""
from __future__ import annotations

from dataclasses import dataclass

from flexcli.models.configs import DiTConfig

UNDERLYING_PATCH = 4


@dataclass(frozen=True)
class ForwardCost:
    patch_size: int
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


def forward_cost(cfg: DiTConfig, patch_size: int | None = None, batch: int = 1, *, lora_rank: int = 0,
                 shared_projection: bool = False, input_size: int | tuple[int, int] | None = None) -> ForwardCost:
    """MACs of `batch` forward passes of a DiT at `patch_size` (unmerged LoRAs of `lora_rank` if > 0).

    `input_size` is the latent side, or (height, width) for a rectangular latent; default the config's.
    """
    p = patch_size or cfg.patch_size
    side = input_size or cfg.input_size
    height, width = side if isinstance(side, tuple) else (side, side)
    if height % p or width % p:
        raise ValueError(f"patch size {p} does not divide the latent size {side}")
    T = (height // p) * (width // p)
    D, H, C, Co = cfg.hidden_size, cfg.mlp_hidden, cfg.in_channels, cfg.out_channels
    b = {
        "patch_embed": T * C * p * p * D,
        "timestep_mlp": 256 * D + D * D,
        "adaLN": cfg.depth * D * 6 * D + D * 2 * D,
        "qkv": cfg.depth * T * D * 3 * D,
        "attention": cfg.depth * 2 * T * T * D,
        "attn_proj": cfg.depth * T * D * D,
        "mlp": cfg.depth * 2 * T * D * H,
        "de_embed": T * D * p * p * Co,
    }
    if lora_rank and p != cfg.patch_size:
        r = lora_rank
        b["lora"] = cfg.depth * T * r * ((D + 3 * D) + (D + D) + (D + H) + (H + D))
    macs = batch * sum(b.values())
    if shared_projection:  # weight-side, once per forward call whatever the batch
        u, p0 = UNDERLYING_PATCH, cfg.patch_size
        target = 0 if p == p0 else p * p * p0 * p0
        b["weight_projection"] = (D * C + D * Co + Co) * (target + p * p * u * u)
        macs += b["weight_projection"]
    return ForwardCost(p, T, macs, {k: v * (1 if k == "weight_projection" else batch) for k, v in b.items()})


def model_cost(model, patch_size: int | None = None, batch: int = 1, merged: bool = False) -> ForwardCost:
    """`forward_cost` for a built model (its flex mode and LoRA rank)."""
    flex = model.flex
    rank = flex.lora_rank if (flex is not None and flex.mode == "lora" and not merged) else 0
    shared = flex is not None and flex.mode == "shared"
    return forward_cost(model.config, patch_size, batch, lora_rank=rank, shared_projection=shared)


def packed_forward_cost(cfg: DiTConfig, patch_sizes: list[int], batch: int = 1, *, lora_rank: int = 0,
                        shared_projection: bool = False, dense_attention: bool = True) -> ForwardCost:
    """MACs of one packed forward pass (paper App. B.2, Fig. 12; `flexcli.flex.packing.forward_packed`).

    Each of the `batch` rows holds one sequence per entry of `patch_sizes`, back to back, with a block-diagonal
    attention mask. Everything but attention costs what separate passes cost (each segment has its own
    conditioning, embeddings and LoRAs). Attention computed densely over the packed row costs
    2 (sum T)^2 D per block; `dense_attention=False` is a kernel that skips the masked blocks: 2 sum(T^2) D.
    """
    parts = [forward_cost(cfg, p, batch, lora_rank=lora_rank, shared_projection=shared_projection)
             for p in patch_sizes]
    breakdown: dict = {}
    for c in parts:
        for k, v in c.breakdown.items():
            breakdown[k] = breakdown.get(k, 0) + v
    total_tokens = sum(c.tokens for c in parts)
    if dense_attention:
        breakdown["attention"] = batch * cfg.depth * 2 * total_tokens * total_tokens * cfg.hidden_size
    macs = sum(breakdown.values())
    return ForwardCost(min(patch_sizes), total_tokens, macs, breakdown)
