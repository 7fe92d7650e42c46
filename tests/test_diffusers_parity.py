"""Numerical parity with diffusers' DiTTransformer2DModel and bit-exact checkpoint round trips.

diffusers differs from the original DiT in two documented places (dit-facts §3.2): its timestep
sinusoid uses `downscale_freq_shift=1` and its MLP pre-norm `norm3` uses `norm_eps` (1e-5, the original
1e-6). With both neutralised the two implementations must agree to float32 round-off.
"""
import dataclasses

import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import DiTTransformer2DModel
from diffusers.models.embeddings import Timesteps

from conftest import inputs, random_dit
from flexcli.api import load_model
from flexcli.io import diffusers_layout as dl
from flexcli.families import read_checkpoint
from flexcli.io.checkpoint import save_checkpoint
from flexcli.io.dit_layout import save_diffusers
from flexcli.models.configs import named_config
from flexcli.models.posembed import sincos_2d

TINY = named_config("DiT-Tiny/2")
# Depth 2, width 96, 4 heads of 24 dims, an 8x8 latent and no learned sigma: every dimension differs from Tiny/2.
VARIANT = dataclasses.replace(TINY, depth=2, hidden_size=96, num_heads=4, input_size=8, learn_sigma=False)
TINY4 = named_config("DiT-Tiny/4")
CONFIGS = {"tiny2": TINY, "variant": VARIANT, "tiny4": TINY4}


def _sincos(cfg):
    grid = np.arange(cfg.input_size // cfg.patch_size, dtype=np.float64)
    return torch.from_numpy(sincos_2d(cfg.hidden_size, grid, grid)).unsqueeze(0)


def _model(cfg, seed=0):
    model = random_dit(cfg, seed=seed)
    # The re-initialisation must leave the fixed sin-cos table alone and make the zero-initialised layers live.
    assert not model.pos_embed.requires_grad
    assert torch.equal(model.pos_embed.data, _sincos(cfg))
    for name in ("blocks.0.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.weight",
                 "final_layer.linear.weight", "final_layer.linear.bias"):
        assert model.state_dict()[name].abs().max() > 0, name
    return model


def _inputs(cfg, n=4, seed=1):
    x, t, y = inputs(cfg, n=n, seed=seed)
    t[0], t[-1] = 0, 999  # both ends of the schedule
    y[0] = cfg.num_classes  # the null (unconditional) class
    return x, t, y


def _time_projs(dmodel):
    projs = [block.norm1.emb.time_proj for block in dmodel.transformer_blocks]
    assert projs and all(isinstance(p, Timesteps) for p in projs)
    return projs


def _diffusers_model(cfg, sd, neutralise_freq_shift=True):
    conf = dl.diffusers_config(cfg)
    assert conf.pop("_class_name") == "DiTTransformer2DModel"
    conf["norm_eps"] = 1e-6  # the original DiT's LayerNorm eps
    dmodel = DiTTransformer2DModel(**conf)
    result = dmodel.load_state_dict(dl.from_original(sd, cfg.depth), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    projs = _time_projs(dmodel)
    assert all(p.downscale_freq_shift == 1 for p in projs)  # the documented difference is really there
    if neutralise_freq_shift:
        for p in projs:
            p.downscale_freq_shift = 0
    return dmodel.eval()


@torch.no_grad()
def _diffusers_forward(dmodel, x, t, y):
    out = dmodel(x, timestep=t, class_labels=y)
    return out.sample


# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_matches_diffusers(name):
    cfg = CONFIGS[name]
    model = _model(cfg)
    x, t, y = _inputs(cfg)
    ours = model(x, t, y)
    assert ours.shape == (len(x), cfg.out_channels, cfg.input_size, cfg.input_size)
    assert ours.abs().mean() > 1e-2  # not trivially zero
    theirs = _diffusers_forward(_diffusers_model(cfg, model.state_dict()), x, t, y)
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["tiny2", "variant"])
@torch.no_grad()
def test_frequency_shift_is_detected(name):
    """Negative control: with diffusers' own timestep sinusoid the outputs differ clearly."""
    cfg = CONFIGS[name]
    model = _model(cfg)
    x, t, y = _inputs(cfg)
    theirs = _diffusers_forward(_diffusers_model(cfg, model.state_dict(), neutralise_freq_shift=False), x, t, y)
    assert (theirs - model(x, t, y)).abs().max() > 1e-4


@torch.no_grad()
def test_label_and_timestep_conditioning_matter():
    """The parity above is not blind to the conditioning: changing t or y changes both outputs alike."""
    cfg = TINY
    model = _model(cfg)
    dmodel = _diffusers_model(cfg, model.state_dict())
    x, t, y = _inputs(cfg)
    base = model(x, t, y)
    for t2, y2 in ((t, (y + 1) % (cfg.num_classes + 1)), ((t + 37) % 1000, y)):
        ours = model(x, t2, y2)
        assert (ours - base).abs().max() > 1e-3
        torch.testing.assert_close(_diffusers_forward(dmodel, x, t2, y2), ours, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
def _assert_same_model(loaded, model, cfg):
    assert loaded.config == cfg
    assert not loaded.training
    ref_sd, got_sd = model.state_dict(), loaded.state_dict()
    assert set(got_sd) == set(ref_sd)
    for k, v in ref_sd.items():
        assert got_sd[k].dtype == v.dtype and torch.equal(got_sd[k], v), k
    assert not loaded.pos_embed.requires_grad
    x, t, y = _inputs(cfg)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), model(x, t, y))


@pytest.mark.parametrize("name", ["tiny2", "variant"])
def test_diffusers_folder_round_trip(name, tmp_path):
    cfg = CONFIGS[name]
    model = _model(cfg)
    folder = save_diffusers(model, tmp_path / "dit")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]

    # diffusers itself loads the folder, strictly.
    dmodel, info = DiTTransformer2DModel.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert info["mismatched_keys"] == [] and info["error_msgs"] == []
    # ... and, with the two documented differences neutralised, computes what our model computes.
    for p in _time_projs(dmodel):
        p.downscale_freq_shift = 0
    for block in dmodel.transformer_blocks:
        block.norm3.eps = 1e-6
    x, t, y = _inputs(cfg)
    with torch.no_grad():
        torch.testing.assert_close(_diffusers_forward(dmodel.eval(), x, t, y), model(x, t, y), atol=1e-5, rtol=0)

    # (a) the folder
    assert read_checkpoint(folder).layout == "diffusers"
    _assert_same_model(load_model(folder), model, cfg)
    # (b) the bare safetensors file inside it (config.json beside it supplies heads and latent size)
    bare = folder / "diffusion_pytorch_model.safetensors"
    ckpt = read_checkpoint(bare)
    assert ckpt.layout == "diffusers"
    assert ckpt.inferred["num_heads"] == "config.json" and ckpt.inferred["input_size"] == "config.json"
    _assert_same_model(load_model(bare), model, cfg)


@pytest.mark.parametrize("name", ["tiny2", "tiny4"])
def test_original_layout_round_trip(name, tmp_path):
    cfg = CONFIGS[name]
    model = _model(cfg)
    sd = model.state_dict()

    st = tmp_path / "dit.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    assert read_checkpoint(st).layout == "original"
    _assert_same_model(load_model(st), model, cfg)

    pt = tmp_path / "dit.pt"
    torch.save(sd, pt)
    assert read_checkpoint(pt).layout == "original"
    _assert_same_model(load_model(pt), model, cfg)

    fc = save_checkpoint(model, tmp_path / "dit-flexcli.safetensors")
    assert read_checkpoint(fc).layout == "flexcli"
    _assert_same_model(load_model(fc), model, cfg)


def test_flexcli_layout_keeps_heads_that_tensors_cannot_tell(tmp_path):
    """Width 96 with 4 heads: the head count is not in the tensors, the flexcli metadata must keep it."""
    model = _model(VARIANT)
    path = save_checkpoint(model, tmp_path / "variant.safetensors")
    _assert_same_model(load_model(path), model, VARIANT)
