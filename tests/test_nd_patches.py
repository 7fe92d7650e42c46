"""N-D patches through the one flex code path (issue #11): a tiny video family with a Conv3d tokenizer at
patch (1, 2, 2) is flexified to the spatial weak size (1, 4, 4) and the temporal one (2, 2, 2). The pretrained
size stays bit-identical, and the PI-resize property holds for both (frames repeated in pairs; 4x4 patches
that are bilinear up-samplings of 2x2 ones)."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from flexcli.flex.core import FlexModel, FlexSpec, flexify_model, forward_packed
from flexcli.flex.layers import LayerNorm, Linear, lora_layers, merge_loras
from flexcli.flex.resize import bilinear_matrix


class TinyBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv, self.proj = Linear(dim, 3 * dim), Linear(dim, dim)
        self.fc1, self.fc2 = Linear(dim, 2 * dim), Linear(2 * dim, dim)
        self.mod = nn.Linear(dim, 2 * dim)

    def forward(self, x, conds, spans):
        shift, scale = spans.per_token([self.mod(c) for c in conds]).chunk(2, dim=-1)
        B, T, D = x.shape
        h = self.norm(x, spans) * (1 + scale) + shift
        q, k, v = self.qkv(h, spans).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=spans.mask(x.device))
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D), spans)
        return x + self.fc2(F.gelu(self.fc1(self.norm(x, spans), spans)), spans)


class TinyVideo(FlexModel):
    """A minimal video DiT family on the protocol: 3-D tokenizer, learned positions, timestep conditioning."""

    family = "tiny-video"
    flex_spec = FlexSpec(tokenizer="patch_embedding", detokenizer="proj_out", lora_targets=("qkv", "proj", "fc1", "fc2"),
                         norms=("norm",))

    def __init__(self, channels=2, dim=32, heads=2, patch=(1, 2, 2), latent=(2, 8, 8)):
        super().__init__()
        self.patch, self.latent, self.channels = patch, latent, channels
        self.patch_embedding = nn.Conv3d(channels, dim, kernel_size=patch, stride=patch)
        self.time_embedding = nn.Linear(1, dim)
        self.blocks = nn.ModuleList([TinyBlock(dim, heads) for _ in range(2)])
        self.proj_out = nn.Linear(dim, math.prod(patch) * channels)
        self.flex = None

    base_patch = property(lambda self: self.patch)
    out_channels = property(lambda self: self.channels)

    def positions(self, patch, grid):
        return None  # this tiny family has none; DiT (sin-cos tables) and Wan (rotary) have theirs

    def condition(self, t, cond):
        return self.time_embedding(t.float()[:, None] / 1000)

    def run_blocks(self, h, conds, spans):
        for block in self.blocks:
            h = block(h, conds, spans)
        return h

    def head(self, h, conds, spans):
        return h


def _randomised(model, seed=0):
    """Random weights, frozen as for inference (torch's matmul may fold a 3-D input differently when a weight
    requires grad, which changes the round-off; flexify freezes the pretrained weights)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.requires_grad_(False).eval()


def _tokens(model, x, p):
    w, b = model.tokenizer_weights(p)
    return F.conv3d(x, w.double(), b.double(), stride=p).flatten(2).transpose(1, 2)


WEAK = [(1, 4, 4), (2, 2, 2)]


@pytest.fixture
def pair():
    base = _randomised(TinyVideo())
    return base, flexify_model(copy.deepcopy(base), WEAK, "lora", lora_rank=4)


@torch.no_grad()
def test_pretrained_size_is_bit_identical(pair):
    base, flex = pair
    x, t = torch.randn(3, 2, 2, 8, 8), torch.tensor([3, 500, 999])
    ref = base(x, t, None)
    assert torch.equal(flex(x, t, None), ref)
    assert flex.patch_sizes == [(1, 2, 2), (1, 4, 4), (2, 2, 2)]
    for p in WEAK:
        out = flex(x, t, None, patch_size=p)
        assert out.shape == x.shape and torch.isfinite(out).all()
    for _, layer in lora_layers(flex):  # trained LoRAs never touch the pretrained size
        for b in layer.lora_B.values():
            b.weight.normal_()
    assert torch.equal(flex(x, t, None), ref)


def test_spatial_pi_resize_property(pair):
    """4x4 patches that are bilinear up-samplings of 2x2 patches give, at (1, 4, 4), the (1, 2, 2) tokens."""
    _, flex = pair
    small = torch.randn(2, 2, 2, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    B = bilinear_matrix(2, 4)  # (16, 4)
    patches = small.unfold(3, 2, 2).unfold(4, 2, 2).reshape(2, 2, 2, 2, 2, 4)  # (n, c, f, gh, gw, 2x2)
    big = torch.einsum("nm,bcfijm->bcfijn", B, patches).reshape(2, 2, 2, 2, 2, 4, 4)
    big = big.permute(0, 1, 2, 3, 5, 4, 6).reshape(2, 2, 2, 8, 8)
    assert torch.allclose(_tokens(flex, big, (1, 4, 4)), _tokens(flex, small, (1, 2, 2)), atol=1e-6)


def test_temporal_pi_resize_property(pair):
    """A clip whose frames repeat in pairs gives, at (2, 2, 2), the (1, 2, 2) tokens of one frame of each pair."""
    _, flex = pair
    one = torch.randn(2, 2, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    clip = one.repeat_interleave(2, dim=2)  # (n, c, 2 frames, h, w), frames equal
    assert torch.allclose(_tokens(flex, clip, (2, 2, 2)), _tokens(flex, one, (1, 2, 2)), atol=1e-6)
    # ... and a clip whose frames differ is not a fixed point (the check is not vacuous)
    other = torch.cat([one, -one], dim=2)
    assert not torch.allclose(_tokens(flex, other, (2, 2, 2)), _tokens(flex, one, (1, 2, 2)), atol=1e-3)


@pytest.mark.parametrize("weak", WEAK)
def test_detokenizer_starts_as_the_upsampling(pair, weak):
    """Each weak output pixel is the bilinear (space) / repeated (time) up-sampling of the powerful output."""
    _, flex = pair
    c = flex.out_channels
    h = torch.randn(5, 32, dtype=torch.float64)
    w0, b0 = flex.detokenizer_weights((1, 2, 2))
    wp, bp = flex.detokenizer_weights(weak)
    o0 = (h @ w0.double().T + b0.double()).reshape(5, 4, c)
    op = (h @ wp.double().T + bp.double()).reshape(5, math.prod(weak), c)
    assert torch.allclose(op, torch.einsum("nm,tmc->tnc", bilinear_matrix((1, 2, 2), weak), o0), atol=1e-6)


@pytest.mark.parametrize("mode", ["lora", "shared"])
def test_packed_mixed_3d_sizes_equal_separate(mode):
    model = flexify_model(_randomised(TinyVideo()), WEAK, mode, lora_rank=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("flex.") or ".lora_" in name or "norm" in name:
                p.add_(0.05 * torch.randn(p.shape))
    if mode == "lora":
        merge_loras(model)
    x, t = torch.randn(2, 2, 2, 8, 8), torch.tensor([10, 700])
    segments = [(x, t, None, (1, 2, 2)), (x, t, None, (2, 2, 2)), (x.flip(0), t, None, (1, 4, 4))]
    for (xs, ts, _, p), out in zip(segments, forward_packed(model, segments)):
        with torch.no_grad():
            assert (out - model(xs, ts, None, patch_size=p)).abs().max() < 1e-5, p


def test_wrong_patch_dimensionality_is_rejected(pair):
    _, flex = pair
    with pytest.raises(ValueError, match="axes"):
        flex(torch.randn(1, 2, 2, 8, 8), torch.tensor([1]), None, patch_size=(4, 4))
    with pytest.raises(ValueError, match="not supported"):
        flex(torch.randn(1, 2, 2, 8, 8), torch.tensor([1]), None, patch_size=(1, 8, 8))
