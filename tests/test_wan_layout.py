"""Wan 2.1 checkpoint layouts (issue #14): original <-> diffusers key mapping, folder detection, config inference."""
import json

import pytest
import safetensors.torch
import torch

from flexcli.errors import FlexcliError
from flexcli.io import wan_layout as wl
from flexcli.io.wan_checkpoint import INDEX_NAME, WEIGHTS_NAME, read_wan_checkpoint, save_original, \
    to_diffusers_model
from wan_helpers import TINY_WAN, tiny_wan, wan_forward, wan_inputs

MODEL_INDEX = {"_class_name": "WanPipeline", "_diffusers_version": "0.33.0.dev0",
               "scheduler": ["diffusers", "UniPCMultistepScheduler"], "text_encoder": ["transformers", "UMT5EncoderModel"],
               "tokenizer": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "WanTransformer3DModel"],
               "vae": ["diffusers", "AutoencoderKLWan"]}


@pytest.fixture(scope="module")
def model():
    return tiny_wan()


@pytest.fixture(scope="module")
def diffusers_dir(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan") / "transformer"
    model.save_pretrained(folder)
    return folder


def _same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _one_line(excinfo) -> str:
    line = str(excinfo.value)
    assert "\n" not in line and line
    return line


def test_diffusers_folder(model, diffusers_dir):
    ckpt = read_wan_checkpoint(diffusers_dir)
    assert ckpt.layout == "diffusers"
    _same_tensors(ckpt.state_dict, model.state_dict())
    for name, value in TINY_WAN.items():
        assert wl._norm(ckpt.config[name]) == wl._norm(value), name
    assert ckpt.sources["num_attention_heads"] == "transformer/config.json"
    assert ckpt.sources["patch_size"] == "tensors" and ckpt.sources["ffn_dim"] == "tensors"
    assert ckpt.config["image_dim"] is None and "text-to-video" in ckpt.sources["image_dim"]


def test_sharded_diffusers_folder_and_pipeline_folder(model, tmp_path):
    model.save_pretrained(tmp_path / "pipe" / "transformer", max_shard_size="20KB")
    assert (tmp_path / "pipe" / "transformer" / INDEX_NAME).is_file()
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(MODEL_INDEX))
    for path in (tmp_path / "pipe" / "transformer", tmp_path / "pipe"):
        ckpt = read_wan_checkpoint(path)
        assert ckpt.layout == "diffusers"
        _same_tensors(ckpt.state_dict, model.state_dict())


@pytest.mark.parametrize("shard_bytes", [None, 20_000])
def test_original_round_trip(model, diffusers_dir, tmp_path, shard_bytes):
    """diffusers -> original layout (single file, or shards + index json like the 14B release) -> diffusers:
    identical tensors and identical forward outputs in diffusers' class."""
    ckpt = read_wan_checkpoint(diffusers_dir)
    folder = save_original(ckpt, tmp_path / "Wan2.1-tiny", max_shard_bytes=shard_bytes)
    config_json = json.loads((folder / "config.json").read_text())
    assert config_json["_class_name"] == "WanModel" and config_json["num_heads"] == 2 and config_json["dim"] == 24
    assert (folder / (INDEX_NAME if shard_bytes else WEIGHTS_NAME)).is_file()
    back = read_wan_checkpoint(folder)
    assert back.layout == "original"
    _same_tensors(back.state_dict, model.state_dict())
    assert back.config == ckpt.config
    assert back.sources["num_attention_heads"] == "Wan2.1-tiny/config.json"
    x, t, text = wan_inputs(model)
    assert torch.equal(wan_forward(to_diffusers_model(back), x, t, text), wan_forward(model, x, t, text))


def test_original_names_match_diffusers_converter(model):
    """Our original -> diffusers mapping gives exactly what diffusers' own Wan converter gives on the same
    tensors (diffusers.loaders.single_file_utils.convert_wan_transformer_to_diffusers), and the original names
    are the release's (Wan-Video/Wan2.1 wan/modules/model.py)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    original = wl.diffusers_to_original(model.state_dict())
    for key in ("patch_embedding.weight", "text_embedding.0.weight", "text_embedding.2.bias",
                "time_embedding.0.weight", "time_embedding.2.weight", "time_projection.1.weight",
                "blocks.1.self_attn.q.weight", "blocks.1.self_attn.o.bias", "blocks.1.self_attn.norm_q.weight",
                "blocks.0.cross_attn.k.weight", "blocks.0.cross_attn.norm_k.weight", "blocks.0.norm3.weight",
                "blocks.0.ffn.0.weight", "blocks.0.ffn.2.bias", "blocks.0.modulation", "head.head.weight",
                "head.modulation"):
        assert key in original, key
    assert not any(".norm2." in k for k in original)  # the original FFN norm has no weights
    theirs = convert_wan_transformer_to_diffusers(dict(original))
    _same_tensors(wl.original_to_diffusers(original), theirs)
    _same_tensors(theirs, model.state_dict())


def test_repackaged_prefix_and_single_file(model, tmp_path):
    original = wl.diffusers_to_original(model.state_dict())
    path = tmp_path / "wan_comfy.safetensors"
    safetensors.torch.save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in original.items()}, path)
    with pytest.raises(FlexcliError, match="cannot tell the attention heads of a Wan model of width 24") as e:
        read_wan_checkpoint(path)  # no config.json, and width 24 is neither a release nor 128-dim heads
    _one_line(e)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "WanModel", "num_heads": 2}))
    ckpt = read_wan_checkpoint(path)
    assert ckpt.layout == "original"
    _same_tensors(ckpt.state_dict, model.state_dict())
    assert ckpt.sources["num_attention_heads"] == "config.json" and ckpt.sources["eps"].startswith("assumed")


def test_heads_without_config(tmp_path):
    assert wl._heads(1536, 30, {}) == (12, "known config Wan2.1-T2V-1.3B")
    assert wl._heads(5120, 40, {}) == (40, "known config Wan2.1-T2V-14B")
    wide = tiny_wan(num_attention_heads=2, attention_head_dim=128, num_layers=1)
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(wl.diffusers_to_original(wide.state_dict()), path)
    ckpt = read_wan_checkpoint(path)
    assert (ckpt.config["num_attention_heads"], ckpt.config["attention_head_dim"]) == (2, 128)
    assert ckpt.sources["num_attention_heads"].startswith("assumed head_dim 128")


def test_patch_size_and_channels_come_from_tensors(tmp_path):
    model = tiny_wan(patch_size=(2, 2, 2), in_channels=6, out_channels=3, num_layers=1)
    model.save_pretrained(tmp_path / "t")
    cfg = read_wan_checkpoint(tmp_path / "t").config
    assert (cfg["patch_size"], cfg["in_channels"], cfg["out_channels"], cfg["num_layers"]) == ([2, 2, 2], 6, 3, 1)


def test_not_wan_folders_are_one_line_errors(tmp_path, diffusers_dir):
    from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel

    PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                             num_layers=1, sample_size=8, caption_channels=16, cross_attention_dim=16
                             ).save_pretrained(tmp_path / "pixart")
    DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=1,
                          sample_size=8).save_pretrained(tmp_path / "dit")
    for name, kind in (("pixart", "PixArtTransformer2DModel"), ("dit", "DiTTransformer2DModel")):
        with pytest.raises(FlexcliError) as e:
            read_wan_checkpoint(tmp_path / name)
        assert kind in _one_line(e) and "not a Wan transformer" in str(e.value)
    (tmp_path / "pixpipe").mkdir()
    (tmp_path / "pixpipe" / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline"}))
    with pytest.raises(FlexcliError, match="PixArtSigmaPipeline folder, not a Wan pipeline"):
        read_wan_checkpoint(tmp_path / "pixpipe")
    safetensors.torch.save_file({"x_embedder.proj.weight": torch.zeros(2, 2)}, tmp_path / "dit.safetensors")
    with pytest.raises(FlexcliError, match="does not hold Wan transformer weights"):
        read_wan_checkpoint(tmp_path / "dit.safetensors")


def test_bad_inputs(tmp_path, model):
    with pytest.raises(FlexcliError, match="not found"):
        read_wan_checkpoint(tmp_path / "nope")
    torch.save(model.state_dict(), tmp_path / "w.pth")
    with pytest.raises(FlexcliError, match="not a safetensors file"):
        read_wan_checkpoint(tmp_path / "w.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlexcliError, match="no safetensors weights"):
        read_wan_checkpoint(tmp_path / "empty")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    next((tmp_path / "sharded").glob("*-00001-of-*.safetensors")).unlink()
    with pytest.raises(FlexcliError, match="shard .* is missing") as e:
        read_wan_checkpoint(tmp_path / "sharded")
    _one_line(e)


def test_contradicting_config_and_image_weights(tmp_path, model):
    model.save_pretrained(tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    (tmp_path / "t" / "config.json").write_text(json.dumps({**cfg, "ffn_dim": 64}))
    with pytest.raises(FlexcliError, match="says ffn_dim=64 but the tensors say 32"):
        read_wan_checkpoint(tmp_path / "t")
    original = wl.diffusers_to_original(model.state_dict())
    original["blocks.0.cross_attn.k_img.weight"] = torch.zeros(24, 24)
    safetensors.torch.save_file(original, tmp_path / "i2v.safetensors")
    with pytest.raises(FlexcliError, match="image-to-video") as e:
        read_wan_checkpoint(tmp_path / "i2v.safetensors")
    _one_line(e)
    del original["blocks.0.cross_attn.k_img.weight"]
    with pytest.raises(FlexcliError, match="unexpected key blocks.0.extra.weight"):
        wl.original_to_diffusers({**original, "blocks.0.extra.weight": torch.zeros(1)})
