"""flexcli's Wan family (issue #14) against diffusers' WanTransformer3DModel on random weights: parity with
the text mask, both checkpoint layouts, packing, and the exact FLOPs of the compute model."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from flexcli.api import build_model
from flexcli.compute import forward_cost, packed_forward_cost
from flexcli.families import read_checkpoint
from flexcli.flex.core import flexify_model, forward_packed
from flexcli.io.wan_checkpoint import read_wan_checkpoint, save_original
from wan_helpers import flex_wan, text_condition, tiny_wan, wan_forward, wan_inputs


@pytest.fixture(scope="module")
def reference():
    return tiny_wan(seed=4)


def _max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def test_parity_with_diffusers_all_ones_mask(reference):
    """The text mask all ones is diffusers' computation: equal within 1e-5 (in fact bit-identical on the CPU)."""
    model = flex_wan(reference)
    x, t, text = wan_inputs(reference, frames=3, height=4, width=6)
    ref = wan_forward(reference, x, t, text)
    out = model(x, t, text_condition(text))
    assert _max_diff(out, ref) <= 1e-5 and out.shape == x.shape
    assert torch.equal(out, ref)


@torch.no_grad()
def test_padding_mask_as_the_pipeline_and_as_a_key_mask(reference):
    """A padding mask: by default the padded embeddings are zeroed and attended to (Wan's pipelines pass no mask,
    after zero-padding the trimmed umT5 output); with text_key_mask the padded keys are dropped, which equals
    diffusers on the trimmed text of each sample."""
    model = flex_wan(reference, text_len=7)
    x, t, text = wan_inputs(reference, frames=2, text_len=7)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0]])
    zeroed = text * mask[..., None]
    assert _max_diff(model(x, t, text_condition(text, mask)), wan_forward(reference, x, t, zeroed)) <= 1e-5
    model.text_key_mask = True
    out = model(x, t, text_condition(text, mask))
    for i, n in enumerate(mask.sum(1).tolist()):
        trimmed = wan_forward(reference, x[i:i + 1], t[i:i + 1], text[i:i + 1, :n])
        assert _max_diff(out[i:i + 1], trimmed) <= 1e-5
    assert _max_diff(out, wan_forward(reference, x, t, zeroed)) > 1e-4  # the two options differ
    # a text shorter than text_len is zero-padded to it, as the pipelines do
    model.text_key_mask = False
    short = text_condition(text[:, :3])
    assert _max_diff(model(x, t, short), wan_forward(reference, x, t, torch.nn.functional.pad(text[:, :3],
                                                                                            (0, 0, 0, 4)))) <= 1e-5


@torch.no_grad()
def test_both_layouts_load_to_the_same_outputs(reference, tmp_path):
    reference.save_pretrained(tmp_path / "pipe" / "transformer")
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    original = save_original(read_wan_checkpoint(tmp_path / "pipe" / "transformer"), tmp_path / "Wan2.1-tiny")
    x, t, text = wan_inputs(reference, frames=2)
    ref = wan_forward(reference, x, t, torch.nn.functional.pad(text, (0, 0, 0, 507)))  # zero-padded to 512
    outputs = {}
    for name, path in (("pipeline", tmp_path / "pipe"), ("diffusers", tmp_path / "pipe" / "transformer"),
                       ("original", original)):
        ckpt = read_checkpoint(path)
        assert ckpt.family == "wan" and ckpt.config.text_len == 512
        outputs[name] = build_model(ckpt)(x, t, text_condition(text))
        assert _max_diff(outputs[name], ref) <= 1e-5, name
    assert torch.equal(outputs["original"], outputs["diffusers"]) and torch.equal(outputs["pipeline"],
                                                                                  outputs["diffusers"])
    assert read_checkpoint(original).layout == "original"


@pytest.mark.parametrize("mode", ["lora", "shared"])
def test_packed_mixed_sizes_equal_separate(reference, mode):
    model = flexify_model(flex_wan(reference), [(2, 2, 2), (1, 4, 4)], mode, lora_rank=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("flex.") or ".lora_" in name or "norm" in name:
                p.add_(0.05 * torch.randn(p.shape))
    x, t, text = wan_inputs(reference, frames=2, height=8, width=8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    for key_mask in (False, True):
        model.text_key_mask = key_mask
        segments = [(x, t, text_condition(text, mask), (1, 2, 2)), (x, t, text_condition(text.flip(0)), (2, 2, 2)),
                    (x.flip(0), t, text_condition(text, mask), (1, 4, 4))]
        for (xs, ts, c, p), out in zip(segments, forward_packed(model, segments)):
            with torch.no_grad():
                assert _max_diff(out, model(xs, ts, c, patch_size=p)) < 1e-5, (p, key_mask)


# ------------------------------------------------------------------------------------------------- FLOPs
def _cpu_sdpa(q, k, v, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(q, k, v)


def _counted(fn) -> int:
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
               torch.ops.aten._scaled_dot_product_attention_math: _cpu_sdpa}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("mode", [None, "lora", "shared"])
def test_flops_equal_the_flop_counter(reference, mode):
    model = flex_wan(reference)
    if mode is not None:
        model = flexify_model(model, [(2, 2, 2), (1, 4, 4)], mode, lora_rank=4)
    x, t, text = wan_inputs(reference, frames=2, height=8, width=8)
    rank = 4 if mode == "lora" else 0
    for p in model.patch_sizes:
        counted = _counted(lambda: model(x, t, text_condition(text), patch_size=p))
        expected = forward_cost(model.config, p, 2, lora_rank=rank, shared_projection=mode == "shared",
                                input_size=(2, 8, 8))
        assert counted == expected.flops, (mode, p, expected.breakdown)
    if mode == "lora":  # a packed row computed densely: self- and cross-attention over the whole row
        segments = [(x, t, text_condition(text), (1, 2, 2)), (x, t, text_condition(text), (1, 4, 4))]
        counted = _counted(lambda: forward_packed(model, segments))
        assert counted == 2 * packed_forward_cost(model.config, [(1, 2, 2), (1, 4, 4)], 2, lora_rank=4,
                                                  input_size=(2, 8, 8)).macs
