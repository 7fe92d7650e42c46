"""Flexifying Wan with 3-D patches (issue #14): the pretrained size stays bit-identical, the real Wan tokenizer
has both PI-resize properties (spatial: bilinear-upsampled patches; temporal: frames repeated in pairs), the
de-tokenizer starts as the up-sampling, rotary positions sit at patch centres, and the cross-attention is
frozen and LoRA-free. Also `flexcli flexify WAN --weak-patch 2,2,2 --weak-patch 1,4,4` and its bad input."""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from flexcli.cli import app
from flexcli.flex.core import flexify_model
from flexcli.flex.layers import lora_layers
from flexcli.flex.packing import Spans
from flexcli.flex.resize import bilinear_matrix
from wan_helpers import flex_wan, text_condition, tiny_wan, wan_inputs

WEAK = [(2, 2, 2), (1, 4, 4)]
runner = CliRunner()


@pytest.fixture(scope="module")
def base():
    return flex_wan(tiny_wan(seed=5))


@pytest.fixture(params=["lora", "shared"])
def pair(base, request):
    return base, flexify_model(copy.deepcopy(base), WEAK, request.param, lora_rank=4)


def _perturb_added(model):
    """Trained-looking weak sizes: every added parameter moved (LoRA B, size embeddings, norm affines, deltas)."""
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("flex.") or ".lora_" in name or ".weight.p" in name or ".bias.p" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


@torch.no_grad()
def test_pretrained_size_is_bit_identical(pair):
    base, flex = pair
    x, t, text = wan_inputs(tiny_wan(seed=5), frames=2, height=8, width=8)
    ref = base(x, t, text_condition(text))
    assert torch.equal(flex(x, t, text_condition(text)), ref)  # at initialisation, both modes
    _perturb_added(flex)
    if flex.flex.mode == "lora":  # trained LoRAs, tokenizers and size embeddings never touch the pretrained size
        assert torch.equal(flex(x, t, text_condition(text)), ref)
    assert flex.patch_sizes == [(1, 2, 2), (1, 4, 4), (2, 2, 2)]
    for p in WEAK:
        out = flex(x, t, text_condition(text), patch_size=p)
        assert out.shape == x.shape and torch.isfinite(out).all() and not torch.allclose(out, ref, atol=1e-3)


def test_cross_attention_is_frozen_and_lora_free(base):
    flex = flexify_model(copy.deepcopy(base), WEAK, "lora", lora_rank=4)
    names = [n for n, _ in lora_layers(flex)]
    assert names and not [n for n in names if ".attn2." in n]
    per_block = sorted(n.split(".", 2)[2] for n in names if n.startswith("blocks.0."))
    assert per_block == ["attn1.to_k", "attn1.to_out.0", "attn1.to_q", "attn1.to_v", "ffn.net.0.proj", "ffn.net.2"]
    trainable = [n for n, p in flex.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("flex.") or ".lora_" in n for n in trainable)
    assert not [n for n in trainable if "attn2" in n or "condition_embedder" in n]
    after = dict(flex.named_parameters())
    cross = [(n, p) for n, p in base.named_parameters() if ".attn2." in n]
    assert cross and all(torch.equal(p, after[n]) and type(base.get_submodule(n.rsplit(".", 1)[0])) is
                         type(flex.get_submodule(n.rsplit(".", 1)[0])) for n, p in cross)


def _tokens(model, x, p):
    w, b = model.tokenizer_weights(p)
    return F.conv3d(x, w.double(), b.double(), stride=p).flatten(2).transpose(1, 2)


def test_spatial_pi_resize_property(pair):
    """Latents whose 4x4 patches are bilinear up-samplings of 2x2 ones give at (1, 4, 4) the (1, 2, 2) tokens."""
    _, flex = pair
    c = flex.config.in_channels
    small = torch.randn(2, c, 2, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    B = bilinear_matrix(2, 4)
    patches = small.unfold(3, 2, 2).unfold(4, 2, 2).reshape(2, c, 2, 2, 2, 4)
    big = torch.einsum("nm,bcfijm->bcfijn", B, patches).reshape(2, c, 2, 2, 2, 4, 4)
    big = big.permute(0, 1, 2, 3, 5, 4, 6).reshape(2, c, 2, 8, 8)
    assert torch.allclose(_tokens(flex, big, (1, 4, 4)), _tokens(flex, small, (1, 2, 2)), atol=1e-6)


def test_temporal_pi_resize_property(pair):
    """Frames repeated in pairs give at (2, 2, 2) the (1, 2, 2) tokens of one frame of each pair: the kernel is
    duplicated along time and halved."""
    _, flex = pair
    one = torch.randn(2, flex.config.in_channels, 2, 8, 8, generator=torch.Generator().manual_seed(2),
                      dtype=torch.float64)
    clip = one.repeat_interleave(2, dim=2)  # 4 frames: f0 f0 f1 f1
    assert torch.allclose(_tokens(flex, clip, (2, 2, 2)), _tokens(flex, one, (1, 2, 2)), atol=1e-6)
    w2, w1 = flex.tokenizer_weights((2, 2, 2))[0], flex.tokenizer.weight
    assert torch.allclose(w2[:, :, 0], w1[:, :, 0] / 2, atol=1e-7) and torch.allclose(w2[:, :, 1], w1[:, :, 0] / 2,
                                                                                       atol=1e-7)
    other = torch.cat([one[:, :, :1], -one[:, :, :1]], dim=2).repeat(1, 1, 2, 1, 1)
    assert not torch.allclose(_tokens(flex, other, (2, 2, 2)), _tokens(flex, one, (1, 2, 2)), atol=1e-3)


@pytest.mark.parametrize("weak", WEAK)
def test_detokenizer_starts_as_the_upsampling(pair, weak):
    """Bilinear in space, repetition in time: each weak output cell up-samples the powerful output."""
    _, flex = pair
    c, D = flex.out_channels, flex.config.hidden_size
    h = torch.randn(5, D, dtype=torch.float64)
    w0, b0 = flex.detokenizer_weights((1, 2, 2))
    wp, bp = flex.detokenizer_weights(weak)
    o0 = (h @ w0.double().T + b0.double()).reshape(5, 4, c)
    op = (h @ wp.double().T + bp.double()).reshape(5, math.prod(weak), c)
    assert torch.allclose(op, torch.einsum("nm,tmc->tnc", bilinear_matrix((1, 2, 2), weak), o0), atol=1e-6)


def test_rotary_positions_at_patch_centres(base):
    """A weak token's rotary angles are those of its centre in the pretrained grid (fractional positions)."""
    from flexcli.models.wan_rope import rotary_at_positions

    d = base.config.attention_head_dim
    cos, sin = base.rotary(Spans(((2, 2, 2), (1, 4, 4)), (4, 2), ((1, 2, 2), (1, 1, 2))), "cpu")
    t = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    h = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.5, 0.5], dtype=torch.float64)
    w = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5, 2.5], dtype=torch.float64)
    ref_cos, ref_sin = rotary_at_positions(t, h, w, d)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)


# ------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan") / "transformer"
    tiny_wan(seed=6).save_pretrained(folder)
    return folder


def test_flexify_cli_with_3d_patches(wan_dir, tmp_path):
    out = tmp_path / "wan-flex.safetensors"
    res = runner.invoke(app, ["flexify", str(wan_dir), "--weak-patch", "2,2,2", "--weak-patch", "1,4,4",
                              "-o", str(out), "--lora-rank", "4"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    info = json.loads(runner.invoke(app, ["info", str(out), "--json"]).stdout)
    assert info["patch_sizes"] == [[1, 2, 2], [1, 4, 4], [2, 2, 2]] and info["flex"]["mode"] == "lora"
    assert info["latent"] == [20, 60, 104] and [r["tokens"] for r in info["cost"]] == [31200, 7800, 15600]
    text = runner.invoke(app, ["info", str(out)]).stdout
    assert "patch sizes: 1x2x2, 1x4x4, 2x2x2" in text and "p=2x2x2" in text


@pytest.mark.parametrize("patch,message", [
    ("4", "is a 2-D patch size, but a video model's patches have 3 axes"),
    ("4,4", "is a 2-D patch size, but a video model's patches have 3 axes"),
    ("1,2,2", "equals the pretrained patch size"),
    ("1,1,4", "smaller than the pretrained"),
    ("2,2", "is a 2-D patch size"),
    ("a,b", "is not a patch size"),
])
def test_flexify_bad_video_patches(wan_dir, tmp_path, patch, message):
    out = tmp_path / "x.safetensors"
    res = runner.invoke(app, ["flexify", str(wan_dir), "--weak-patch", patch, "-o", str(out)])
    assert res.exit_code == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_3d_patch_for_an_image_model_is_one_line(tmp_path):
    from flexcli.quickstart import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "dit.safetensors")
    res = runner.invoke(app, ["flexify", str(ckpt), "--weak-patch", "2,2,2", "-o", str(tmp_path / "o.safetensors")])
    assert res.exit_code == 2 and "is a 3-D patch size, but an image model's patches have 2 axes" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.safetensors").exists()


def test_a_folder_that_is_not_wan_is_one_line(tmp_path):
    folder = tmp_path / "transformer"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    from safetensors.torch import save_file
    save_file({"pos_embed.proj.weight": torch.zeros(4, 4, 2, 2)}, str(folder / "diffusion_pytorch_model.safetensors"))
    res = runner.invoke(app, ["flexify", str(folder), "-p", "2,2,2", "-o", str(tmp_path / "o.safetensors")])
    assert res.exit_code == 2 and "does not hold Wan transformer weights" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.safetensors").exists()


def test_lora_cross_attn_opt_in(base):
    """--lora-cross-attn (the "cross_attn" group): LoRAs on attn2 too, its k/v LoRAs over the text tokens; the
    pretrained size stays bit-identical and the FLOPs still equal torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    from flexcli.compute import model_cost

    flex = flexify_model(copy.deepcopy(base), WEAK, "lora", lora_rank=4,
                         lora_targets=base.flex_spec.targets(("cross_attn",)))
    per_block = sorted(n.split(".", 2)[2] for n, _ in lora_layers(flex) if n.startswith("blocks.0."))
    assert [n for n in per_block if n.startswith("attn2.")] == ["attn2.to_k", "attn2.to_out.0", "attn2.to_q",
                                                                "attn2.to_v"]
    _perturb_added(flex)
    x, t, text = wan_inputs(tiny_wan(seed=5), frames=2, height=8, width=8)
    with torch.no_grad():
        assert torch.equal(flex(x, t, text_condition(text)), base(x, t, text_condition(text)))
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
               lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v)}
    for p in WEAK:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            flex(x, t, text_condition(text), patch_size=p)
        assert counter.get_total_flops() == model_cost(flex, p, 2, input_size=(2, 8, 8)).flops
