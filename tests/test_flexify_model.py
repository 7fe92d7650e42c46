"""Flexified models: powerful mode preserved bit-for-bit, weak modes initialised as the paper says."""
import copy
import dataclasses

import pytest
import torch

from conftest import inputs
from flexcli.flex.core import flexify_model
from flexcli.flex.resize import bilinear_matrix
from flexcli.models.configs import NAMED_CONFIGS
from flexcli.flex.resize import grid_coordinates
from flexcli.models.posembed import sincos_2d


def _perturb_added(model, seed=3):
    """Make every added parameter non-trivial (as after training) so the tests cannot pass by zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("flex.") or ".lora_" in name or ".norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("mode", ["lora", "shared"])
def test_pretrained_patch_is_bit_identical(mode, tiny):
    x, t, y = inputs(tiny.config)
    ref = tiny(x, t, y)
    flex = flexify_model(copy.deepcopy(tiny), [4, 8], mode=mode, lora_rank=4)
    assert torch.equal(flex(x, t, y), ref)
    assert torch.equal(flex(x, t, y, patch_size=2), ref)
    # The weak modes run in between without disturbing the powerful one.
    flex(x, t, y, patch_size=4)
    assert torch.equal(flex(x, t, y), ref)
    if mode == "lora":  # trained LoRAs and tokenizers never touch the pretrained size
        _perturb_added(flex)
        assert torch.equal(flex(x, t, y), ref)


def test_lora_mode_freezes_the_base(tiny):
    flex = flexify_model(copy.deepcopy(tiny), [4], mode="lora", lora_rank=4)
    trainable = {n for n, p in flex.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("flex.") or ".lora_" in n for n in trainable)
    assert any(".lora_A.p4" in n for n in trainable) and "flex.size_embed.p4" in trainable


def test_weak_modes_change_output_after_training(tiny):
    """The per-size parameters really act on the weak mode."""
    x, t, y = inputs(tiny.config)
    for mode in ("lora", "shared"):
        flex = flexify_model(copy.deepcopy(tiny), [4], mode=mode, lora_rank=4)
        before = flex(x, t, y, patch_size=4)
        _perturb_added(flex)
        assert (flex(x, t, y, patch_size=4) - before).abs().max() > 1e-3


def _tokens_without_position(flex, x, p):
    w, b = flex.tokenizer_weights(p)
    return torch.nn.functional.conv2d(x, w, b, stride=p).flatten(2).transpose(1, 2)


@pytest.mark.parametrize("mode", ["lora", "shared"])
@pytest.mark.parametrize("weak", [4, 8])
def test_pi_resize_property(mode, weak, tiny):
    """An input that is the bilinear upsampling of p=2 patches gives, at p=weak, the p=2 token."""
    flex = flexify_model(copy.deepcopy(tiny), [4, 8], mode=mode, lora_rank=4)
    cfg = tiny.config
    g = torch.Generator().manual_seed(0)
    grid = cfg.input_size // weak
    small = torch.randn(2, cfg.in_channels, grid * 2, grid * 2, generator=g, dtype=torch.float64)
    # Upsample each 2x2 patch to weak x weak with the bilinear matrix (patch-wise, as in FlexiViT).
    B = bilinear_matrix(2, weak)  # (weak^2, 4)
    patches = small.unfold(2, 2, 2).unfold(3, 2, 2).reshape(2, cfg.in_channels, grid, grid, 4)
    big = torch.einsum("nm,bcijm->bcijn", B, patches).reshape(2, cfg.in_channels, grid, grid, weak, weak)
    big = big.permute(0, 1, 2, 4, 3, 5).reshape(2, cfg.in_channels, grid * weak, grid * weak)
    base_w, base_b = flex.tokenizer_weights(2)
    ref = torch.nn.functional.conv2d(small, base_w.double(), base_b.double(), stride=2).flatten(2).transpose(1, 2)
    w, b = flex.tokenizer_weights(weak)
    got = torch.nn.functional.conv2d(big, w.double(), b.double(), stride=weak).flatten(2).transpose(1, 2)
    assert torch.allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("mode", ["lora", "shared"])
@pytest.mark.parametrize("weak", [4, 8])
def test_de_embedding_is_bilinear_upsampling(mode, weak, tiny):
    """At init, the weak de-embedding of any token is the bilinear upsampling of the powerful one."""
    flex = flexify_model(copy.deepcopy(tiny), [4, 8], mode=mode, lora_rank=4)
    c = tiny.config.out_channels
    h = torch.randn(5, tiny.config.hidden_size, dtype=torch.float64)
    w2, b2 = flex.detokenizer_weights(2)
    wp, bp = flex.detokenizer_weights(weak)
    o2 = (h @ w2.double().T + b2.double()).reshape(5, 4, c)  # (token, 2x2 pixel, channel)
    op = (h @ wp.double().T + bp.double()).reshape(5, weak * weak, c)
    expected = torch.einsum("nm,tmc->tnc", bilinear_matrix(2, weak), o2)
    assert torch.allclose(op, expected, atol=1e-5)
    # A constant output stays constant (the pinv formula would have scaled it by 1/4).
    assert torch.allclose(bilinear_matrix(2, weak).sum(1), torch.ones(weak * weak, dtype=torch.float64))


def test_positional_embeddings_at_patch_centres(tiny):
    flex = flexify_model(copy.deepcopy(tiny), [4], mode="lora", lora_rank=4)
    cfg = tiny.config
    table = flex.flex.pos_p4[0]
    coords = grid_coordinates(cfg.input_size // 4, 4, 2)
    assert coords.tolist() == [0.5, 2.5, 4.5, 6.5]  # centre of pretrained tokens (2i, 2i+1)
    assert torch.allclose(table, torch.from_numpy(sincos_2d(cfg.hidden_size, coords, coords)))
    # Token (i, j) of the weak grid sits between the four pretrained tokens it covers.
    pe = tiny.pos_embed[0].reshape(8, 8, -1)
    mid = pe[0:2, 2:4].reshape(4, -1).mean(0)
    assert (table[0 * 4 + 1] - mid).abs().max() < 0.2 < (table[0 * 4 + 3] - mid).abs().max()


def test_positional_embeddings_match_diffusers_sincos(tiny):
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    ref = torch.as_tensor(get_2d_sincos_pos_embed(tiny.config.hidden_size, 8, base_size=8, output_type="pt"))
    assert torch.allclose(tiny.pos_embed[0], ref.float(), atol=1e-6)


def test_learned_positional_table_is_interpolated(tiny):
    """A non-sin-cos table (e.g. fine-tuned) is evaluated at the same coordinates by interpolation."""
    model = copy.deepcopy(tiny)
    with torch.no_grad():
        model.pos_embed.add_(torch.randn_like(model.pos_embed) * 0.1)
    flex = flexify_model(model, [4], mode="lora", lora_rank=4)
    pe = model.pos_embed[0].reshape(8, 8, -1)
    centre = pe[0:2, 0:2].reshape(4, -1).mean(0)  # bilinear at (0.5, 0.5)
    assert torch.allclose(flex.flex.pos_p4[0, 0], centre, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in NAMED_CONFIGS if not n.startswith(("DiT-Tiny", "DiT-Mini"))])
def test_weak_modes_shapes_for_every_config(name):
    """Every DiT config (depth cut to 1 to keep CPU time low) runs its weak modes on a 32x32 latent."""
    cfg = dataclasses.replace(NAMED_CONFIGS[name], depth=1, num_classes=10, input_size=32)
    torch.manual_seed(0)
    from flexcli.models.dit import DiT

    model = DiT(cfg).eval()
    weak = [p for p in (4, 8, 16) if p > cfg.patch_size][:2]
    flexify_model(model, weak, mode="lora", lora_rank=2)
    x = torch.randn(2, cfg.in_channels, 32, 32)
    t, y = torch.tensor([10, 900]), torch.tensor([1, 10])
    with torch.no_grad():
        for p in model.patch_sizes:
            out = model(x, t, y, patch_size=p)
            assert out.shape == (2, 2 * cfg.in_channels, 32, 32)  # eps and the learned-sigma channels
            assert torch.isfinite(out).all()


def test_unsupported_patch_size_is_rejected(tiny):
    x, t, y = inputs(tiny.config)
    with pytest.raises(ValueError, match="not supported"):
        tiny(x, t, y, patch_size=4)



def test_resized_tokenizers_stay_on_the_weights_device_and_dtype():
    """A model already on an accelerator is flexified there (`flexcli profile --schedules` does this on CUDA): the
    fixed resize maps, built on the CPU in float64, follow the weights (an H200 run failed in bmm before). The meta
    device stands in for CUDA."""
    from flexcli.flex.resize import pi_resize_matrix, resize_kernel, resize_rows

    m = pi_resize_matrix(2, 4)
    kernel = resize_kernel(torch.empty(8, 4, 2, 2, device="meta", dtype=torch.bfloat16), m, 4)
    rows = resize_rows(torch.empty(16, 8, device="meta", dtype=torch.bfloat16), m, 4)
    assert (kernel.device.type, kernel.dtype, kernel.shape) == ("meta", torch.bfloat16, (8, 4, 4, 4))
    assert (rows.device.type, rows.dtype, rows.shape) == ("meta", torch.bfloat16, (64, 8))


@pytest.mark.parametrize("mode", ["lora", "shared"])
def test_flexify_builds_the_new_weights_on_the_models_device(mode):
    """A model flexified where it lives (CUDA in `flexcli profile --schedules`) gets its new tokenizers, size
    embeddings, resize maps and norms there, not on the CPU. The meta device stands in for CUDA; Wan, whose
    positions are rotary, flexifies on it end to end. peft leaves LoRA adapters of a meta layer on the CPU (on
    a real device it moves them by their base layer: the bfloat16 test below sees that for the dtype)."""
    from flexcli.models.wan import Wan
    from flexcli.models.wan_config import WanConfig
    from wan_helpers import TINY_WAN

    with torch.device("meta"):
        model = Wan(WanConfig.from_dict({**TINY_WAN, "text_len": 5}))
    flexify_model(model, [(2, 2, 2), (1, 4, 4)], mode, lora_rank=4)
    added = [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()]
             if n.startswith("flex.") or ".norm" in n]
    assert added and {t.device.type for _, t in added} == {"meta"}, [n for n, t in added if t.device.type != "meta"]


@pytest.mark.parametrize("mode", ["lora", "shared"])
def test_flexifying_in_bfloat16_equals_flexifying_in_float32_then_casting(mode, tiny):
    """The added weights take the model's dtype (they were float32, and the weak size raised on a bfloat16 model),
    and a bfloat16 DiT's sin-cos table is still recognised as one (it fell back to interpolating the rounded
    table): both ways of getting a bfloat16 flexified model give the same outputs, bit for bit."""
    x, t, y = inputs(tiny.config)
    cast = flexify_model(copy.deepcopy(tiny), [4], mode=mode, lora_rank=4)
    _perturb_added(cast)
    cast.to(torch.bfloat16)
    low = flexify_model(copy.deepcopy(tiny).to(torch.bfloat16), [4], mode=mode, lora_rank=4)
    low.load_state_dict(cast.state_dict())
    assert {p.dtype for p in low.parameters()} == {torch.bfloat16}
    for patch in (2, 4):
        out = low(x.to(torch.bfloat16), t, y, patch_size=patch)
        assert out.dtype == torch.bfloat16
        assert torch.equal(out, cast(x.to(torch.bfloat16), t, y, patch_size=patch))
