"""Checkpoint reading: config inference, train.py checkpoints, flexified files and bad-input errors."""
import argparse
import dataclasses
import hashlib
import json
import re

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

import flexcli
from conftest import inputs, random_dit
from flexcli.api import flexify_checkpoint, load_model
from flexcli.errors import FlexcliError
from flexcli.families import read_checkpoint
from flexcli.io.checkpoint import METADATA_KEY
from flexcli.models.configs import named_config

TINY = named_config("DiT-Tiny/2")
CONFIGS = {
    "tiny2": TINY,
    "tiny4": named_config("DiT-Tiny/4"),
    # Widths the head count can be inferred for: 128 -> 2 heads of 64 dims (the head_dim-64 assumption) ...
    "w128d3": dataclasses.replace(TINY, hidden_size=128, depth=3, num_heads=2, input_size=8, learn_sigma=False),
    # ... and 96 (not a multiple of 64) -> the documented fallback of one head.
    "w96d3": dataclasses.replace(TINY, hidden_size=96, depth=3, num_heads=1, input_size=8, learn_sigma=False),
}
HEADS_SOURCE = {"tiny2": "named config", "tiny4": "named config", "w128d3": "assumed head_dim 64",
                "w96d3": "assumed 1 head"}


def _save(sd, path):
    if path.suffix == ".safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


def _assert_tensors_equal(got, want):
    assert set(got) == set(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k


# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_inference(name, suffix, tmp_path):
    cfg = CONFIGS[name]
    model = random_dit(cfg)
    ckpt = read_checkpoint(_save(model.state_dict(), tmp_path / f"dit{suffix}"))
    assert ckpt.layout == "original"
    assert ckpt.config == cfg
    _assert_tensors_equal(ckpt.state_dict, model.state_dict())
    for field in ("hidden_size", "in_channels", "patch_size", "depth", "learn_sigma", "mlp_ratio"):
        assert ckpt.inferred[field] == "tensors", field
    assert ckpt.inferred["input_size"].startswith("tensors")  # from pos_embed
    assert ckpt.inferred["num_classes"].startswith("tensors")
    # The head count is not in the tensors: the source says where it came from.
    assert ckpt.inferred["num_heads"] == HEADS_SOURCE[name]
    assert "tensors" not in ckpt.inferred["num_heads"]


# --------------------------------------------------------------------------------------------------
def test_train_py_checkpoint_prefers_ema(tmp_path):
    sd_a = random_dit(TINY, seed=0).state_dict()
    sd_b = random_dit(TINY, seed=1).state_dict()
    assert not torch.equal(sd_a["blocks.0.attn.qkv.weight"], sd_b["blocks.0.attn.qkv.weight"])
    path = tmp_path / "0001000.pt"
    torch.save({"model": sd_a, "ema": sd_b, "opt": {"state": {}},
                "args": argparse.Namespace(model="DiT-Tiny/2", epochs=3)}, path)

    ema = read_checkpoint(path)
    assert ema.config == TINY and ema.layout == "original"
    assert ema.metadata["source"] == "train.py checkpoint, 'ema' weights"
    _assert_tensors_equal(ema.state_dict, sd_b)

    raw = read_checkpoint(path, use_ema=False)
    assert raw.metadata["source"] == "train.py checkpoint, 'model' weights"
    _assert_tensors_equal(raw.state_dict, sd_a)

    model = load_model(path, use_ema=False)
    _assert_tensors_equal(model.state_dict(), sd_a)


# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["lora", "shared"])
def test_flexified_checkpoint(mode, tmp_path):
    base = random_dit(TINY)
    src = tmp_path / "dit.pt"
    torch.save(base.state_dict(), src)
    out = tmp_path / f"dit-{mode}.safetensors"
    written, _, _ = flexify_checkpoint(src, [4], out, mode=mode, lora_rank=4)
    assert written == out and out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind

    with safe_open(str(out), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
    assert meta["config"] == TINY.to_dict()
    assert meta["flex"]["mode"] == mode
    assert meta["flex"]["patch_sizes"] == [2, 4]
    assert meta["flex"]["base_patch_size"] == 2
    if mode == "lora":
        assert meta["flex"]["lora"]["rank"] == 4
    else:
        assert "lora" not in meta["flex"]
    assert meta["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert meta["source"]["file"] == "dit.pt" and meta["source"]["layout"] == "original"
    assert meta["flexcli_version"] == flexcli.__version__

    model = load_model(out)
    assert model.patch_sizes == [2, 4]
    assert model.flex is not None and model.flex.mode == mode
    x, t, y = inputs(TINY, n=2)
    with torch.no_grad():
        ref = base(x, t, y)
        outs = {p: model(x, t, y, patch_size=p) for p in (None, 2, 4)}
    for p, o in outs.items():
        assert o.shape == (2, 8, 16, 16), p
        assert torch.isfinite(o).all(), p
    # The pretrained patch size still computes the source model exactly.
    assert torch.equal(outs[None], ref) and torch.equal(outs[2], ref)
    assert not torch.equal(outs[4], ref)


# --------------------------------------------------------------------------------------------------
class NotAStateDict:
    def __init__(self):
        self.weights = torch.zeros(3)


def _truncated_safetensors(tmp_path):
    path = _save(random_dit(TINY).state_dict(), tmp_path / "cut.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    return path


BAD_INPUTS = {
    "missing": (lambda d: d / "nope.pt", r"nope\.pt not found"),
    "text": (lambda d: (d / "notes.pt").write_text("just some text\n") and d / "notes.pt",
             r"notes\.pt is neither a safetensors file nor a PyTorch checkpoint"),
    "text-safetensors": (lambda d: (d / "notes.safetensors").write_text("just some text\n") and d / "notes.safetensors",
                         r"notes\.safetensors is not a readable safetensors file"),
    "truncated": (_truncated_safetensors, r"cut\.safetensors is not a readable safetensors file"),
    "not-dit": (lambda d: _save({"foo": torch.zeros(2, 3)}, d / "foo.safetensors"),
                r"foo\.safetensors does not hold a DiT state dict \(missing x_embedder\.proj\.weight"),
    "not-dit-pt": (lambda d: _save({"foo": torch.zeros(2, 3)}, d / "foo.pt"),
                   r"foo\.pt does not hold a DiT state dict \(missing x_embedder\.proj\.weight"),
    "pickle-object": (lambda d: _save(NotAStateDict(), d / "obj.pt"),
                      r"obj\.pt cannot be loaded as a weights-only PyTorch checkpoint"),
    "empty-folder": (lambda d: (d / "empty").mkdir() or d / "empty",
                     r"empty is a folder without diffusion_pytorch_model\.safetensors"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_flexcli_error(case, tmp_path):
    make, pattern = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(FlexcliError, match=pattern) as info:
        load_model(path)
    assert info.value.fix  # every message also says what to do
    assert "\n" not in str(info.value)
    with pytest.raises(FlexcliError, match=pattern):
        read_checkpoint(path)
    if case == "pickle-object":  # weights_only refused it (rather than the state-dict check)
        assert re.search(r"weights", str(info.value.__cause__), re.IGNORECASE)
