"""Flexifying PixArt (issue #12, paper Fig. 5): LoRAs on self-attention and the feed-forward layers, frozen
cross-attention without LoRA (opt-in with --lora-cross-attn), the pretrained size bit-identical in LoRA and shared
modes, PI-resize, packing with per-run captions, and FLOPs equal to torch's counter (cross-attention included)."""
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from flexcli.compute import model_cost, packed_forward_cost
from flexcli.flex.conditions import TextCondition
from flexcli.flex.core import flexify_model, forward_packed
from flexcli.flex.layers import lora_layers, merge_loras
from flexcli.flex.resize import bilinear_matrix
from flexcli.models.pixart import CROSS_ATTENTION, PixArt, random_pixart
from flexcli.models.pixart_config import named_pixart_config

CFG = dataclasses.replace(named_pixart_config("PixArt-Tiny/2"), caption_channels=24, model_max_length=6,
                          sample_size=8)


def _cond(n=2, length=6, seed=3):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, 2:] = 0
    return TextCondition(torch.randn(n, length, CFG.caption_channels, generator=g), mask)


def _x(n=2, seed=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g), torch.tensor([900, 20, 400][:n])


def _perturb(model, std=0.05):
    """Give the added parameters (zero-initialised LoRA B, size embeddings, norm affines) non-trivial values."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("flex.") or ".lora_" in name or "norm" in name:
                p.add_(std * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def base():
    return random_pixart(CFG).requires_grad_(False)


@pytest.mark.parametrize("mode", ["lora", "shared"])
def test_pretrained_size_is_bit_identical(base, mode):
    x, t = _x()
    cond = _cond()
    with torch.no_grad():
        ref = base(x, t, cond)
        flex = flexify_model(copy.deepcopy(base), [4], mode, lora_rank=4)
        assert torch.equal(flex(x, t, cond), ref)  # as flexified
        if mode == "lora":  # trained LoRAs and size embeddings never touch the pretrained size
            assert torch.equal(_perturb(flex)(x, t, cond), ref)
        assert flex(x, t, cond, patch_size=4).shape == ref.shape


def test_cross_attention_frozen_without_lora_by_default(base):
    flex = flexify_model(copy.deepcopy(base), [4], "lora", lora_rank=4)
    names = [n for n, _ in lora_layers(flex)]
    assert names and not any(".attn2." in n for n in names)
    assert {n.split(".", 2)[2] for n in names} == {"attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                                                  "ff.net.0.proj", "ff.net.2"}
    trainable = {n for n, p in flex.named_parameters() if p.requires_grad}
    assert not any(".attn2." in n for n in trainable)
    before = {k: v for k, v in base.state_dict().items() if ".attn2." in k}
    after = {k.replace(".base_layer.", "."): v for k, v in flex.state_dict().items() if ".attn2." in k}
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert flex.flex.describe()["lora"]["targets"] == list(PixArt.flex_spec.lora_targets)


def test_cross_attention_loras_opt_in(base):
    targets = PixArt.flex_spec.targets(("cross_attn",))
    flex = _perturb(flexify_model(copy.deepcopy(base), [4], "lora", lora_rank=4, lora_targets=targets))
    assert sum(".attn2." in n for n, _ in lora_layers(flex)) == 4 * CFG.num_layers
    assert set(CROSS_ATTENTION) <= set(flex.flex.lora_targets)
    x, t = _x()
    with torch.no_grad():
        assert torch.equal(flex(x, t, _cond()), base(x, t, _cond()))
    with pytest.raises(ValueError, match="optional LoRA target group"):
        PixArt.flex_spec.targets(("mlp",))


def test_pi_resize_property(base):
    """4x4 patches that are bilinear up-samplings of 2x2 patches give, at p=4, the tokens of p=2 (no positions)."""
    flex = flexify_model(copy.deepcopy(base), [4], "lora", lora_rank=4)
    small = torch.randn(2, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    B = bilinear_matrix(2, 4)
    patches = small.unfold(2, 2, 2).unfold(3, 2, 2).reshape(2, 4, 2, 2, 4)
    big = torch.einsum("nm,bcijm->bcijn", B, patches).reshape(2, 4, 2, 2, 4, 4).permute(0, 1, 2, 4, 3, 5)
    big = big.reshape(2, 4, 8, 8)

    def tokens(x, p):
        w, b = flex.tokenizer_weights(p)
        return F.conv2d(x, w.double(), b.double(), stride=p)
    assert torch.allclose(tokens(big, 4), tokens(small, 2), atol=1e-6)


@pytest.mark.parametrize("mode,merge", [("lora", False), ("lora", True), ("shared", False)])
def test_packed_equals_separate_with_per_run_captions(base, mode, merge):
    targets = PixArt.flex_spec.targets(("cross_attn",)) if mode == "lora" else None
    flex = _perturb(flexify_model(copy.deepcopy(base), [4], mode, lora_rank=4, lora_targets=targets))
    if merge:
        merge_loras(flex)
    x, t = _x()
    segments = [(x, t, _cond(seed=1), 2), (x.flip(0), t, _cond(length=4, seed=2), 4), (x, t, _cond(seed=5), 4)]
    for (xs, ts, c, p), out in zip(segments, forward_packed(flex, segments)):
        with torch.no_grad():
            assert (out - flex(xs, ts, c, patch_size=p)).abs().max() < 1e-5, p


# ------------------------------------------------------------------------------------------------ FLOPs
def _cpu_sdpa(q, k, v, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(q, k, v)


def counted(fn):
    ops = torch.ops.aten
    mapping = {ops._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("mode,groups", [(None, ()), ("lora", ()), ("lora", ("cross_attn",)), ("shared", ())])
def test_flops_equal_the_flop_counter(base, mode, groups):
    model = copy.deepcopy(base)
    if mode:
        flexify_model(model, [4], mode, lora_rank=4, lora_targets=PixArt.flex_spec.targets(groups))
    x, t = _x()
    cond = _cond(length=CFG.model_max_length)
    for p in model.patch_sizes:
        assert counted(lambda: model(x, t, cond, patch_size=p)) == model_cost(model, p, batch=2).flops, p
    breakdown = model_cost(model, 2).breakdown
    assert breakdown["cross_attention"] == CFG.num_layers * 2 * 16 * 6 * CFG.inner_dim  # 2 T L D per block
    assert breakdown["adaLN_single"] == CFG.inner_dim * 6 * CFG.inner_dim  # one linear for all blocks


def test_packed_flops_equal_the_flop_counter(base):
    model = flexify_model(copy.deepcopy(base), [4], "lora", lora_rank=4)
    x, t = _x()
    cond = _cond(length=CFG.model_max_length)
    got = counted(lambda: forward_packed(model, [(x, t, cond, 2), (x, t, cond, 4)]))
    assert got == packed_forward_cost(CFG, [2, 4], 2, lora_rank=4).flops


def test_micro_conditions_flops_equal_the_flop_counter():
    cfg = dataclasses.replace(CFG, attention_head_dim=12, cross_attention_dim=24, use_additional_conditions=True)
    model = random_pixart(cfg)
    x, t = _x()
    cond = _cond(length=cfg.model_max_length)
    assert counted(lambda: model(x, t, cond)) == model_cost(model, 2, batch=2).flops


def test_flop_counter_sees_cross_attention(base):
    """Guard the cross-check: without the CPU SDPA formula, attention (self and cross) counts as zero."""
    x, t = _x()
    cond = _cond(length=CFG.model_max_length)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        base(x, t, cond)
    b = model_cost(base, 2, batch=2).breakdown
    assert counted(lambda: base(x, t, cond)) - counter.get_total_flops() == 2 * (b["attention"] + b["cross_attention"])
