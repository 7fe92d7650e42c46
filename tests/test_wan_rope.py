"""Wan rotary embedding at (fractional) positions (issue #14): equal to diffusers' WanRotaryPosEmbed on integer grids."""
import pytest
import torch

from flexcli.models.wan_rope import grid_positions, patch_centres, rope_axis_dims, rotary_at_positions, \
    wan_rotary_embedding


@pytest.mark.parametrize("head_dim", [12, 64, 128])
@pytest.mark.parametrize("latent,patch", [((3, 4, 6), (1, 2, 2)), ((21, 6, 10), (1, 2, 2)), ((4, 8, 8), (2, 2, 2)),
                                          ((2, 8, 12), (1, 4, 4))])
def test_integer_grid_is_bit_identical_to_diffusers(head_dim, latent, patch):
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    reference = WanRotaryPosEmbed(head_dim, patch, max_seq_len=1024)
    cos_ref, sin_ref = reference(torch.zeros(1, 4, *latent))
    cos, sin = wan_rotary_embedding(latent, head_dim, patch_size=patch, base_patch_size=patch)
    assert cos.shape == cos_ref.shape == (1, cos.shape[1], 1, head_dim) and cos.dtype == cos_ref.dtype
    assert torch.equal(cos, cos_ref) and torch.equal(sin, sin_ref)
    assert rope_axis_dims(head_dim) == (reference.t_dim, reference.h_dim, reference.w_dim)


def test_split_of_a_released_head():
    assert rope_axis_dims(128) == (44, 42, 42)  # Wan 2.1 1.3B and 14B: head_dim 128
    with pytest.raises(ValueError, match="cannot be split"):
        rope_axis_dims(4)


def test_patch_centres():
    assert patch_centres(3, 1).tolist() == [0.0, 1.0, 2.0]
    assert patch_centres(3, 2).tolist() == [0.5, 2.5, 4.5]
    assert patch_centres(2, 4).tolist() == [1.5, 5.5]
    for ratio in (2, 4):  # the centre is the mean of the pretrained positions the patch covers
        covered = torch.arange(3 * ratio, dtype=torch.float64).reshape(3, ratio).mean(dim=1)
        assert torch.equal(patch_centres(3, ratio), covered)


def test_weak_patch_positions():
    """(2,2,2) and (1,4,4) over the pretrained (1,2,2): the token grid of a 4x4x4 latent, in pretrained units."""
    t, h, w = grid_positions((2, 2, 2), (2, 2, 2), (1, 2, 2))
    assert t.tolist() == [0.5] * 4 + [2.5] * 4 and h.tolist() == [0, 0, 1, 1] * 2 and w.tolist() == [0, 1] * 4
    t, h, w = grid_positions((4, 1, 1), (1, 4, 4), (1, 2, 2))
    assert t.tolist() == [0, 1, 2, 3] and h.tolist() == [0.5] * 4 and w.tolist() == [0.5] * 4
    cos, sin = wan_rotary_embedding((4, 4, 4), 12, patch_size=(2, 2, 2))
    assert cos.shape == (1, 8, 1, 12)
    with pytest.raises(ValueError, match="not divisible"):
        wan_rotary_embedding((3, 4, 4), 12, patch_size=(2, 2, 2))


def _rotate(x, cos, sin):
    """diffusers' WanAttnProcessor rotation of interleaved pairs: x (1, N, heads, head_dim)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos[..., 0::2] - x2 * sin[..., 1::2]
    out[..., 1::2] = x1 * sin[..., 1::2] + x2 * cos[..., 0::2]
    return out


def test_fractional_positions_keep_rotary_relative():
    """q.k after rotation depends only on the position difference, fractional positions included."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 12, generator=g), torch.randn(1, 1, 1, 12, generator=g)

    def score(p, r):
        cq, sq = rotary_at_positions(*(torch.tensor([v], dtype=torch.float64) for v in p), 12)
        ck, sk = rotary_at_positions(*(torch.tensor([v], dtype=torch.float64) for v in r), 12)
        return (_rotate(q, cq, sq) * _rotate(k, ck, sk)).sum().item()

    base = score((0.5, 2.5, 1.0), (3.0, 0.0, 4.5))
    assert score((7.5, 3.75, 2.25), (10.0, 1.25, 5.75)) == pytest.approx(base, abs=1e-5)
    assert score((0.0, 2.5, 1.0), (3.0, 0.0, 4.5)) != pytest.approx(base, abs=1e-3)
