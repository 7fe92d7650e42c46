"""Packed forward passes (block-diagonal mask, per-token adaLN, per-segment LoRAs) equal separate passes."""
import pytest
import torch

from conftest import inputs, random_dit
from flexcli.flex.core import flexify_model
from flexcli.flex.layers import merge_loras
from flexcli.flex.core import forward_packed
from flexcli.flex.packing import block_diagonal_mask
from flexcli.models.configs import named_config
from flexcli.compute import forward_cost, packed_forward_cost


def _flex(mode: str, sizes=(4, 8)):
    model = random_dit("DiT-Tiny/2")
    flexify_model(model, list(sizes), mode, lora_rank=4)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # make every added parameter non-trivial (LoRA B, size embeddings, norm affines)
        for name, p in model.named_parameters():
            if ".lora_" in name or name.startswith("flex.") or "norm" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("mode,merge", [("lora", False), ("lora", True), ("shared", False)])
def test_packed_equals_separate(mode, merge):
    model = _flex(mode)
    if merge:
        merge_loras(model)
    x, t, y = inputs(model.config, n=3)
    y_null = torch.full_like(y, model.config.num_classes)
    segments = [(x, t, y, 2), (x, t, y_null, 4), (x.flip(0), t, y, 8)]
    packed = forward_packed(model, segments)
    with torch.no_grad():
        for (xs, ts, ys, p), out in zip(segments, packed):
            ref = model(xs, ts, ys, patch_size=p)
            assert out.shape == ref.shape
            assert (out - ref).abs().max() < 1e-5, (mode, merge, p)


def test_packed_same_size_on_plain_dit():
    model = random_dit("DiT-Tiny/2")
    x, t, y = inputs(model.config, n=2)
    a, b = forward_packed(model, [(x, t, y, None), (x, t, torch.full_like(y, 10), None)])
    with torch.no_grad():
        assert (a - model(x, t, y)).abs().max() < 1e-5
        assert (b - model(x, t, torch.full_like(y, 10))).abs().max() < 1e-5


def test_block_diagonal_mask():
    m = block_diagonal_mask([2, 1])
    assert m.tolist() == [[True, True, False], [True, True, False], [False, False, True]]


def test_packed_flops():
    cfg = named_config("DiT-XL/2")
    sep = forward_cost(cfg, 2).macs + forward_cost(cfg, 4).macs
    assert packed_forward_cost(cfg, [2, 4], dense_attention=False).macs == sep
    dense = packed_forward_cost(cfg, [2, 4])
    extra = cfg.depth * 2 * cfg.hidden_size * ((256 + 64) ** 2 - 256 ** 2 - 64 ** 2)
    assert dense.macs == sep + extra and dense.tokens == 320
    assert packed_forward_cost(cfg, [2, 4], batch=3).macs == 3 * dense.macs


def test_packed_forward_runs_the_models_own_blocks():
    """A packed pass goes through the very block objects of the plain pass (no re-implemented block): each
    block is called once, on the packed sequence (sum of both segments' tokens)."""
    model = _flex("lora")
    calls = []
    hooks = [b.register_forward_hook(lambda m, args, out: calls.append((id(m), args[0].shape[1])))
             for b in model.blocks]
    x, t, y = inputs(model.config, n=2)
    forward_packed(model, [(x, t, y, 2), (x, t, y, 4)])
    for h in hooks:
        h.remove()
    assert calls == [(id(b), 64 + 16) for b in model.blocks]
