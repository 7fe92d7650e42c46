"""The analytic FLOPs model: the DiT paper's published numbers and torch's own flop counter."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from conftest import inputs, random_dit
from flexcli.flex.core import flexify_model
from flexcli.flex.layers import merge_loras
from flexcli.models.configs import named_config
from flexcli.compute import forward_cost, model_cost

# DiT paper (Peebles & Xie 2023), Table 4: "Gflops" (multiply-accumulates) of one forward pass at 256x256.
PUBLISHED_GMACS = {
    "DiT-S/8": 0.36, "DiT-S/4": 1.41, "DiT-S/2": 6.06,
    "DiT-B/8": 1.42, "DiT-B/4": 5.56, "DiT-B/2": 23.01,
    "DiT-L/8": 5.01, "DiT-L/4": 19.70, "DiT-L/2": 80.71,
    "DiT-XL/8": 7.39, "DiT-XL/4": 29.05, "DiT-XL/2": 118.64,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_GMACS))
def test_published_dit_gflops_within_one_percent(name):
    got = forward_cost(named_config(name)).gmacs
    assert abs(got - PUBLISHED_GMACS[name]) / PUBLISHED_GMACS[name] < 0.01, (name, got)


def test_flexidit_weak_mode_matches_smaller_patch_config():
    xl = named_config("DiT-XL/2")
    assert forward_cost(xl, 4).macs == forward_cost(named_config("DiT-XL/4")).macs
    assert round(forward_cost(xl, 4).gmacs, 2) == 29.04
    assert forward_cost(xl, 2, batch=2).macs == 2 * forward_cost(xl, 2).macs  # CFG doubles the batch
    assert forward_cost(xl).flops == 2 * forward_cost(xl).macs


def test_unmerged_lora_overhead_is_the_papers_formula():
    """§3.2: a LoRA of rank r on (d_in, d_out) adds N (d_in r + r d_out) MACs."""
    cfg = named_config("DiT-XL/2")
    T, D, H, r = 64, cfg.hidden_size, cfg.mlp_hidden, 32
    extra = forward_cost(cfg, 4, lora_rank=r).macs - forward_cost(cfg, 4).macs
    per_block = sum(T * (i * r + r * o) for i, o in [(D, 3 * D), (D, D), (D, H), (H, D)])
    assert extra == cfg.depth * per_block
    assert forward_cost(cfg, 2, lora_rank=r).macs == forward_cost(cfg, 2).macs  # no LoRA at p0


def _cpu_sdpa(q, k, v, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(q, k, v)


def counted_flops(model, patch_size, n=2):
    x, t, y = inputs(model.config, n=n)
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(x, t, y, patch_size=patch_size)
    return counter.get_total_flops()


@pytest.mark.parametrize("name", ["DiT-Tiny/2", "DiT-Tiny/4", "DiT-Mini/2"])
def test_plain_model_equals_flop_counter(name):
    model = random_dit(name)
    assert counted_flops(model, None) == model_cost(model, None, batch=2).flops


@pytest.mark.parametrize("mode", ["lora", "shared"])
def test_flexified_model_equals_flop_counter(mode):
    model = flexify_model(random_dit("DiT-Tiny/2"), [4, 8], mode=mode, lora_rank=8)
    for p in model.patch_sizes:
        assert counted_flops(model, p) == model_cost(model, p, batch=2).flops, p


def test_merged_lora_costs_the_plain_forward():
    model = flexify_model(random_dit("DiT-Tiny/2"), [4], mode="lora", lora_rank=8)
    unmerged = counted_flops(model, 4)
    merge_loras(model)
    merged = counted_flops(model, 4)
    assert merged == model_cost(model, 4, batch=2, merged=True).flops == forward_cost(model.config, 4, 2).flops
    assert unmerged - merged == 2 * 2 * model.config.depth * 16 * 8 * (4 * 64 + 2 * 64 + 5 * 64 + 5 * 64)


def test_flop_counter_sees_attention():
    """Guard the cross-check itself: without the CPU SDPA formula torch counts attention as zero."""
    model = random_dit("DiT-Tiny/2")
    x, t, y = inputs(model.config, n=2)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t, y)
    attention = 2 * 2 * model.config.depth * 2 * 64 * 64 * 64
    assert counted_flops(model, None) - counter.get_total_flops() == attention
