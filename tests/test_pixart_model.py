"""flexcli's PixArt (issue #12): parity with diffusers' PixArtTransformer2DModel at 256 px and at a 1024-px config
(interpolation scale 2, micro-conditions), with the caption key mask, read from the diffusers and the original
layouts; the learned null caption; the Emu-class variant (QK-norm, learned positions)."""
import dataclasses

import pytest
import torch

from flexcli.api import build_model
from flexcli.families import read_checkpoint
from flexcli.flex.conditions import TextCondition
from flexcli.flex.core import flexify_model
from flexcli.io.pixart_layout import read_pixart, save_original
from flexcli.models.pixart import PixArt, PixArtCondition, random_pixart
from flexcli.models.pixart_config import named_pixart_config, pixart_pos_table, pixart_positions
from pixart_helpers import original_forward, tiny_pixart

TOL = 1e-5


def _inputs(side: int, channels: int, n: int = 2, length: int = 7, seed: int = 0, micro: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, side, side, generator=g)
    t = torch.tensor([999, 37, 500, 1][:n])
    y = torch.randn(n, length, channels, generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, 3:] = 0  # a padded caption
    if not micro:
        return x, t, TextCondition(y, mask), {}
    hw, ar = torch.tensor([[side * 8.0, side * 8.0]] * n), torch.ones(n, 1)
    return x, t, PixArtCondition(y, mask, hw, ar), {"resolution": hw, "aspect_ratio": ar}


def _diffusers_out(ref, x, t, cond, added):
    with torch.no_grad():
        return ref(x, encoder_hidden_states=cond.embeds, timestep=t, encoder_attention_mask=cond.mask,
                   added_cond_kwargs=added or None).sample


@pytest.mark.parametrize("kw,sides", [(dict(), (8, 16)),  # 256-px style config (interpolation scale 1)
                                      (dict(sample_size=128, head_dim=12, layers=1), (128, 16))])  # 1024 px
def test_parity_with_diffusers_from_the_diffusers_layout(tmp_path, kw, sides):
    ref = tiny_pixart(**kw)
    ref.save_pretrained(tmp_path / "t")
    ckpt = read_checkpoint(tmp_path / "t")
    assert ckpt.family == "pixart" and ckpt.layout == "diffusers"
    model = build_model(ckpt)
    micro = ckpt.config.use_additional_conditions
    if kw:
        assert (ckpt.config.interpolation_scale, ckpt.config.base_size, micro) == (2.0, 64, True)
    for side in sides:  # the native grid, and another resolution (diffusers' position rule)
        x, t, cond, added = _inputs(side, ckpt.config.caption_channels, micro=micro)
        out = model(x, t, cond)
        assert (out - _diffusers_out(ref, x, t, cond, added)).abs().max() < TOL
    padded = TextCondition(cond.embeds.clone(), cond.mask)
    padded.embeds[0, 3:] = 100.0  # masked caption tokens do not matter
    if micro:
        padded = PixArtCondition(padded.embeds, padded.mask, cond.resolution, cond.aspect_ratio)
        both = model.cat_conditions([cond, cond])  # the sampler's [cond; guidance] batch keeps the micro-conditions
        assert isinstance(both, PixArtCondition) and both.resolution.shape == (4, 2)
    assert (model(x, t, padded) - out).abs().max() < 1e-6


def test_parity_from_the_original_layout_round_trip(tmp_path):
    """diffusers -> original .pth (with a learned null caption) -> flexcli == diffusers == PixArt's own forward."""
    ref = tiny_pixart(head_dim=64)  # the original stores no head count: 64-d heads are what is assumed
    ref.save_pretrained(tmp_path / "t")
    pix = read_pixart(tmp_path / "t")
    pix.null_caption = torch.randn(120, 16)
    save_original(pix, tmp_path / "orig.pth")
    ckpt = read_checkpoint(tmp_path / "orig.pth")
    assert ckpt.family == "pixart" and ckpt.layout == "original" and ckpt.config.null_caption
    model = build_model(ckpt)
    assert torch.equal(model.y_embedding, pix.null_caption)
    x, t, cond, _ = _inputs(8, 16)
    out = model(x, t, cond)
    assert (out - _diffusers_out(ref, x, t, cond, {})).abs().max() < TOL
    from flexcli.io.pixart_layout import to_original_state_dict
    orig = original_forward(to_original_state_dict(pix), x, t.float(), cond.embeds, cond.mask, heads=2)
    assert (out - orig).abs().max() < TOL


def test_learned_null_caption():
    model = random_pixart(dataclasses.replace(named_pixart_config("PixArt-Tiny/2"), null_caption=True))
    assert torch.equal(model.learned_null_caption(), model.y_embedding) and model.text_length == 16
    assert "y_embedding" in model.state_dict() and not model.y_embedding.requires_grad
    assert random_pixart(named_pixart_config("PixArt-Tiny/2")).learned_null_caption() is None


def test_sincos_positions_at_patch_centres():
    cfg = named_pixart_config("PixArt-XL/2-1024")
    ints = torch.arange(64).double().numpy()
    assert torch.allclose(pixart_positions(cfg, ints, ints, (64, 64)), pixart_pos_table(cfg), atol=1e-6)
    model = PixArt(dataclasses.replace(named_pixart_config("PixArt-Tiny/2"), interpolation_scale=2.0))
    weak = model.weak_positions((4, 4))  # token i of p=4 sits at pretrained position 2i + 0.5, over the scale
    centres = (torch.arange(4).double() * 2 + 0.5).numpy()
    assert torch.allclose(weak, pixart_positions(model.config, centres, centres, (8, 8)))


def test_emu_class_config_runs_and_flexifies():
    cfg = dataclasses.replace(named_pixart_config("PixArt-Tiny/2"), qk_norm="layer_norm", pos_embed_type="learned",
                              num_layers=1)
    base = random_pixart(cfg)
    names = dict(base.named_parameters())
    assert {"pos_embed.pos_embed", "transformer_blocks.0.attn1.norm_q.weight",
            "transformer_blocks.0.attn2.norm_k.weight"} <= set(names)
    with pytest.raises(ValueError, match="Emu"):
        cfg.to_diffusers()
    x, t, cond, _ = _inputs(16, 384, length=16)
    with torch.no_grad():
        ref = base(x, t, cond)
        for mode in ("lora", "shared"):
            flex = flexify_model(random_pixart(cfg), [4], mode, lora_rank=4)
            assert torch.equal(flex(x, t, cond), ref)
            assert flex(x, t, cond, patch_size=4).shape == ref.shape
    # learned positions: the weak table is the bilinear interpolation of the pretrained one at token centres
    table = base.pos_embed.pos_embed[0].reshape(8, 8, -1)
    weak = flex.flex.pos_p4[0].reshape(4, 4, -1)
    centre = table[:2, :2].reshape(4, -1).mean(0)  # token 0 of p=4 sits at (0.5, 0.5) of the p=2 grid
    assert torch.allclose(weak[0, 0], centre, atol=1e-6)


def test_named_configs():
    xl = named_pixart_config("PixArt-XL/2")
    assert (xl.inner_dim, xl.num_layers, xl.base_size, xl.interpolation_scale) == (1152, 28, 16, 1.0)
    assert named_pixart_config("PixArt-XL/2-512").interpolation_scale == 1.0
    hi = named_pixart_config("PixArt-XL/2-1024")
    assert (hi.interpolation_scale, hi.base_size, hi.use_additional_conditions) == (2.0, 64, True)
    emu = named_pixart_config("Emu/2")
    assert (emu.num_layers, emu.inner_dim, emu.model_max_length, emu.sample_size // 2) == (24, 2048, 120, 64)
