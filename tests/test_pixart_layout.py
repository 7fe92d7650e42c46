"""PixArt checkpoint layouts: diffusers folders (plain, sharded, pipeline), the original release, config inference."""
import json

import pytest
import torch

from flexcli.errors import FlexcliError
from flexcli.io import pixart_keys as pk
from flexcli.models.pixart_config import PixArtConfig, pixart_pos_table
from flexcli.io.pixart_layout import read_pixart, save_original, to_original_state_dict
from pixart_helpers import original_forward, tiny_pixart


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and e.value.fix, text
    return text


@pytest.fixture(scope="module")
def model():
    return tiny_pixart()


def test_diffusers_folder_reads_back(model, tmp_path):
    from diffusers import PixArtTransformer2DModel

    model.save_pretrained(tmp_path / "t")
    ckpt = read_pixart(tmp_path / "t")
    assert ckpt.layout == "diffusers"
    _same(ckpt.state_dict, model.state_dict())
    cfg = ckpt.config
    assert (cfg.inner_dim, cfg.num_layers, cfg.patch_size, cfg.caption_channels, cfg.out_channels) == (16, 2, 2, 16, 8)
    assert cfg.num_attention_heads == 2 and ckpt.sources["num_attention_heads"] == "config.json"
    assert cfg.learn_sigma and ckpt.sources["out_channels"] == "tensors"
    assert cfg.interpolation_scale == 1.0 and ckpt.sources["interpolation_scale"].startswith("config.json (unset")
    assert ckpt.null_caption is None and "negative prompt" in ckpt.null_caption_source
    rebuilt = PixArtTransformer2DModel(**cfg.to_diffusers())
    rebuilt.load_state_dict(ckpt.state_dict, strict=True)  # the resolved config builds the same architecture


def test_sharded_folder_and_single_file(model, tmp_path):
    model.save_pretrained(tmp_path / "s", max_shard_size="20KB")
    assert (tmp_path / "s" / "diffusion_pytorch_model.safetensors.index.json").exists()
    _same(read_pixart(tmp_path / "s").state_dict, model.state_dict())
    model.save_pretrained(tmp_path / "f")
    single = read_pixart(tmp_path / "f" / "diffusion_pytorch_model.safetensors")  # config.json beside it is used
    assert single.layout == "diffusers" and single.sources["sample_size"] == "config.json"


@pytest.mark.parametrize("pipeline,max_length", [("PixArtAlphaPipeline", 120), ("PixArtSigmaPipeline", 300)])
def test_pipeline_folder(model, tmp_path, pipeline, max_length):
    model.save_pretrained(tmp_path / "p" / "transformer")
    index = {"_class_name": pipeline, "transformer": ["diffusers", "PixArtTransformer2DModel"]}
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    ckpt = read_pixart(tmp_path / "p")
    _same(ckpt.state_dict, model.state_dict())
    assert ckpt.config.model_max_length == max_length and ckpt.metadata["pipeline"] == pipeline


def test_original_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "t")
    ckpt = read_pixart(tmp_path / "t")
    ckpt.null_caption = torch.randn(120, 16)
    for name in ("orig.pth", "orig.safetensors"):
        save_original(ckpt, tmp_path / name)
        back = read_pixart(tmp_path / name, hints={"num_attention_heads": 2})  # the original does not store heads
        assert back.layout == "original" and back.sources["num_attention_heads"] == "given"
        _same(back.state_dict, ckpt.state_dict)  # diffusers -> original -> diffusers: identical tensors
        assert torch.equal(back.null_caption, ckpt.null_caption) and "y_embedding" in back.null_caption_source
        assert back.config == ckpt.config
        assert back.sources["sample_size"] == "tensors (pos_embed grid)"
        assert back.pos_embed.startswith("sin-cos (interpolation_scale 1")
        assert back.sources["model_max_length"] == "tensors (y_embedding rows)"
        _same(to_original_state_dict(back), to_original_state_dict(ckpt))  # and original -> diffusers -> original


def test_original_keys_are_the_release_names(model):
    sd = pk.diffusers_to_original(model.state_dict(), torch.zeros(120, 16), torch.zeros(1, 16, 16))
    d = 16
    expect = {"x_embedder.proj.weight": (d, 4, 2, 2), "t_embedder.mlp.0.weight": (d, 256),
              "t_embedder.mlp.2.weight": (d, d), "t_block.1.weight": (6 * d, d),
              "y_embedder.y_proj.fc1.weight": (d, 16), "y_embedder.y_proj.fc2.weight": (d, d),
              "y_embedder.y_embedding": (120, 16), "pos_embed": (1, 16, d),
              "blocks.1.scale_shift_table": (6, d), "blocks.1.attn.qkv.weight": (3 * d, d),
              "blocks.1.attn.proj.weight": (d, d), "blocks.1.cross_attn.q_linear.weight": (d, d),
              "blocks.1.cross_attn.kv_linear.weight": (2 * d, d), "blocks.1.cross_attn.proj.weight": (d, d),
              "blocks.1.mlp.fc1.weight": (4 * d, d), "blocks.1.mlp.fc2.weight": (d, 4 * d),
              "final_layer.scale_shift_table": (2, d), "final_layer.linear.weight": (2 * 2 * 8, d)}
    for key, shape in expect.items():
        assert tuple(sd[key].shape) == shape, key
    per_block = {k.split(".", 2)[2] for k in sd if k.startswith("blocks.0.")}
    assert len(per_block) == 15 and len(sd) == 2 * 15 + 17  # nothing else: 15 tensors a block, 17 outside


@pytest.mark.parametrize("micro", [False, True])
def test_original_layout_forward_matches_diffusers(micro):
    """The key mapping is semantically right: the original PixArt forward on converted tensors equals diffusers'."""
    model = tiny_pixart(head_dim=12, use_additional_conditions=micro)  # width 24: micro-conditions need D % 3 == 0
    cfg = PixArtConfig.from_dict({**model.config, "interpolation_scale": 1.0, "use_additional_conditions": micro})
    sd = pk.diffusers_to_original(model.state_dict(), None, pixart_pos_table(cfg))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, 16, generator=g)
    t = torch.tensor([999.0, 37.0])
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]])
    hw, ar = torch.tensor([[64.0, 64.0], [48.0, 80.0]]), torch.tensor([[1.0], [0.6]])
    kwargs = {"resolution": hw, "aspect_ratio": ar} if micro else {"resolution": None, "aspect_ratio": None}
    with torch.no_grad():
        ref = model(x, encoder_hidden_states=y, timestep=t, encoder_attention_mask=mask,
                    added_cond_kwargs=kwargs).sample
        ours = original_forward(sd, x, t, y, mask, heads=2, hw=hw if micro else None, ar=ar if micro else None)
    assert (ours - ref).abs().max() < 1e-5 * ref.abs().max()
    padded = y.clone()
    padded[0, 3:] = 100.0  # masked caption tokens must not matter
    with torch.no_grad():
        again = model(x, encoder_hidden_states=padded, timestep=t, encoder_attention_mask=mask,
                      added_cond_kwargs=kwargs).sample
    assert torch.allclose(again, ref, atol=1e-6)


@pytest.mark.parametrize("sample_size,heads,head_dim,scale,base,micro", [(32, 2, 8, 1.0, 16, False),
                                                                          (128, 2, 12, 2.0, 64, True)])
def test_config_inference_256_and_1024(tmp_path, sample_size, heads, head_dim, scale, base, micro):
    model = tiny_pixart(sample_size=sample_size, heads=heads, head_dim=head_dim, layers=1)
    model.save_pretrained(tmp_path / "t")
    ckpt = read_pixart(tmp_path / "t")
    cfg = ckpt.config
    assert (cfg.sample_size, cfg.interpolation_scale, cfg.base_size, cfg.use_additional_conditions) == \
        (sample_size, scale, base, micro)
    assert ckpt.sources["use_additional_conditions"] == "tensors"
    assert torch.equal(pixart_pos_table(cfg), model.pos_embed.pos_embed)  # diffusers' own table, bit for bit
    save_original(ckpt, tmp_path / "o.pth")  # the original at this size: the table itself states size and scale
    orig = read_pixart(tmp_path / "o.pth", hints={"num_attention_heads": heads})
    assert orig.config == cfg and orig.sources["interpolation_scale"].startswith("tensors (pos_embed is sin-cos")


def test_interpolation_scale_from_config_and_defaults(tmp_path):
    model = tiny_pixart(sample_size=32, interpolation_scale=0.5)  # PixArt-Sigma 256 px writes 0.5 explicitly
    model.save_pretrained(tmp_path / "sigma")
    ckpt = read_pixart(tmp_path / "sigma")
    assert ckpt.config.interpolation_scale == 0.5 and ckpt.sources["interpolation_scale"] == "config.json"
    assert torch.equal(pixart_pos_table(ckpt.config), model.pos_embed.pos_embed)
    bare = read_pixart(tmp_path / "sigma" / "diffusion_pytorch_model.safetensors", hints={"sample_size": 64})
    assert bare.config.sample_size == 64 and bare.sources["sample_size"] == "given"
    sd = pk.diffusers_to_original(model.state_dict())  # original tensors without pos_embed: nothing states the size
    torch.save({"state_dict": sd}, tmp_path / "nopos.pth")
    guess = read_pixart(tmp_path / "nopos.pth")
    assert guess.config.sample_size == 32 and guess.sources["sample_size"].startswith("assumed")
    assert guess.config.num_attention_heads == 1 and guess.sources["num_attention_heads"].startswith("assumed (1 head")


def test_wrong_family_and_bad_inputs(model, tmp_path):
    from conftest import random_dit
    from flexcli.io.dit_layout import save_diffusers

    dit = random_dit("DiT-Tiny/2")
    torch.save(dit.state_dict(), tmp_path / "dit.pt")
    save_diffusers(dit, tmp_path / "dit_diffusers")
    for bad in (tmp_path / "dit.pt", tmp_path / "dit_diffusers"):
        with pytest.raises(FlexcliError) as e:
            read_pixart(bad)
        assert "class-conditional DiT" in _one_line(e)
    (tmp_path / "pipe" / "text_encoder").mkdir(parents=True)
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    (tmp_path / "corrupt.pth").write_bytes(b"\x80\x02not a pickle at all" * 10)
    model.save_pretrained(tmp_path / "t")
    blob = (tmp_path / "t" / "diffusion_pytorch_model.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "empty").mkdir()
    cases = {tmp_path / "pipe": "pipeline folder without transformer/", tmp_path / "corrupt.pth": "weights-only",
             tmp_path / "truncated.safetensors": "not a readable safetensors", tmp_path / "empty": "neither",
             tmp_path / "missing.pth": "not found"}
    for bad, words in cases.items():
        with pytest.raises(FlexcliError) as e:
            read_pixart(bad)
        assert words in _one_line(e), bad


def test_config_json_conflicts_and_unknown_keys(model, tmp_path):
    model.save_pretrained(tmp_path / "t")
    cfg_file = tmp_path / "t" / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "caption_channels": 4096}))
    with pytest.raises(FlexcliError) as e:
        read_pixart(tmp_path / "t")
    assert "caption_channels=4096 but the tensors hold 16" in _one_line(e)
    sd = pk.diffusers_to_original(model.state_dict())
    sd["blocks.0.attn.q_norm.weight"] = torch.ones(8)  # a qk-norm variant flexcli does not map
    torch.save({"state_dict": sd}, tmp_path / "qknorm.pth")
    with pytest.raises(FlexcliError) as e:
        read_pixart(tmp_path / "qknorm.pth")
    assert "blocks.0.attn.q_norm.weight" in _one_line(e)


def test_assumed_heads_for_pixart_xl():
    from flexcli.models.pixart_config import assumed_heads

    assert assumed_heads(1152)[:2] == (16, 72)  # PixArt-XL/2: 16 heads x 72
    assert assumed_heads(1024)[:2] == (16, 64)


def test_pos_table_off_the_native_grid_follows_diffusers():
    """Other grids (PixArtMS aspect ratios, other resolutions): positions scaled by base_size / grid."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    cfg = PixArtConfig(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8, num_layers=1,
                       sample_size=128, patch_size=2, caption_channels=16, cross_attention_dim=24,
                       interpolation_scale=2.0, use_additional_conditions=True)
    ref = get_2d_sincos_pos_embed(24, (48, 80), base_size=64, interpolation_scale=2.0, output_type="pt")
    assert torch.equal(pixart_pos_table(cfg, 48, 80), ref.float().unsqueeze(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_pos_embed_scale_is_read_off_a_half_precision_table(dtype):
    """An original pos_embed saved in fp16 or bf16 is still recognised, with its own interpolation scale."""
    from flexcli.io.pixart_layout import _SCALES, _match_pos_embed

    for scale in _SCALES:
        cfg = PixArtConfig(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=1,
                           sample_size=32, patch_size=2, caption_channels=16, cross_attention_dim=32,
                           interpolation_scale=scale, use_additional_conditions=False)
        size, found, note = _match_pos_embed(pixart_pos_table(cfg).to(dtype), 32, 2)
        assert (size, found) == (32, scale), note
    noise = torch.randn(1, 256, 32, generator=torch.Generator().manual_seed(0)).clamp(-1, 1).to(dtype)
    assert _match_pos_embed(noise, 32, 2)[1] is None  # a table that is not sin-cos still is not
