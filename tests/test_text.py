"""Offline text encoders: the packaged all-MiniLM-L6-v2, a tiny local T5 (--text-encoder DIR), prompt-embeds
files and the encoding cache."""
import json
import socket

import pytest
import torch

from flexcli.errors import FlexcliError
from flexcli.text import (
    EncodingCache, TextEncoding, load_minilm, load_prompt_embeds, load_t5_encoder, minilm_path, save_prompt_embeds)

WORDS = ["a", "red", "cat", "dog", "on", "the", "mat", "blue", "sky", "photo", "of"]


def _tiny_t5(folder, seed: int = 0, dtype=torch.float32):
    """A random 2-layer T5 encoder (d_model 16) and a real T5 tokenizer class with a tiny unigram vocabulary.

    sentencepiece is not installed, so the tokenizer is built with the `tokenizers` library (Unigram model,
    Metaspace pre-tokenizer, `</s>` appended) and wrapped in transformers' T5TokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in WORDS]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    T5TokenizerFast(tokenizer_object=tok, extra_ids=0, eos_token="</s>", unk_token="<unk>",
                    pad_token="<pad>").save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(vocab), d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, dropout_rate=0.0)
    T5EncoderModel(cfg).to(dtype).save_pretrained(folder)
    return folder


@pytest.fixture
def no_network(monkeypatch):
    """HF_HUB_OFFLINE=1 and any socket connection fails: loading must use local files only."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _pooled(enc: TextEncoding) -> torch.Tensor:
    m = enc.mask[..., None].float()
    v = (enc.embeds * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(v, dim=-1)


def test_minilm_loads_offline_and_encodes(no_network):
    from transformers import AutoTokenizer

    enc = load_minilm(max_length=24)
    assert enc.width == 384 and enc.identity["kind"] == "minilm" and len(enc.identity["sha256"]) == 64
    assert (minilm_path() / "model.safetensors").exists()
    prompts = ["A photo of a cat", "a photo of a kitten", "a red sports car on a highway"]
    out = enc.encode(prompts)
    assert out.embeds.shape == (3, 24, 384) and out.mask.shape == (3, 24)
    lengths = [len(AutoTokenizer.from_pretrained(str(minilm_path()))(p.lower())["input_ids"]) for p in prompts]
    assert out.mask.sum(1).tolist() == lengths  # [CLS] ... [SEP], then padding
    assert all(out.mask[i, :n].all() and not out.mask[i, n:].any() for i, n in enumerate(lengths))
    assert not torch.allclose(out.embeds[0], out.embeds[1])
    cos = _pooled(out) @ _pooled(out).T  # the real weights: a cat is closer to a kitten than to a car
    assert cos[0, 1] > cos[0, 2] + 0.2


def test_tiny_t5_through_text_encoder_dir(tmp_path, no_network):
    from transformers import T5EncoderModel

    folder = _tiny_t5(tmp_path / "t5", dtype=torch.float16)  # saved in fp16: the CPU runs it in fp32
    enc = load_t5_encoder(folder)
    assert enc.width == 16 and next(enc.model.parameters()).dtype == torch.float32
    long_prompt = " ".join(["the red cat"] * 60)  # 180 words: truncated to PixArt's 120 tokens
    out = enc.encode(["A red cat on the mat", "blue sky", long_prompt])
    assert out.embeds.shape == (3, 120, 16)
    assert out.mask.sum(1).tolist() == [6 + 1, 2 + 1, 120]  # words + </s>; the long one fills all 120
    ids = enc.tokenizer(["a red cat on the mat"])["input_ids"][0]
    assert ids[-1] == 1 and len(ids) == 7  # T5 appends </s> (id 1)
    ref = T5EncoderModel.from_pretrained(str(folder), dtype=torch.float32)
    tokens = enc.tokenizer(["a red cat on the mat", "blue sky"], padding="max_length", max_length=120,
                           return_tensors="pt")
    with torch.no_grad():
        direct = ref(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
    assert torch.allclose(out.embeds[:2], direct, atol=1e-6)
    enc.batch_size = 1  # rows do not depend on their batch (padding to max_length)
    assert torch.allclose(enc.encode(["A red cat on the mat", "blue sky"]).embeds, out.embeds[:2], atol=1e-6)
    with pytest.raises(FlexcliError):
        enc.encode([])


def test_pipeline_folder_supplies_text_encoder_and_tokenizer(tmp_path):
    _tiny_t5(tmp_path / "plain")
    pipe = tmp_path / "pipe"
    _tiny_t5(pipe / "text_encoder")
    (pipe / "tokenizer").mkdir()
    for f in (pipe / "text_encoder").glob("tokenizer*"):
        f.rename(pipe / "tokenizer" / f.name)
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    a, b = load_t5_encoder(pipe), load_t5_encoder(tmp_path / "plain")
    assert torch.equal(a.encode(["a cat"]).embeds, b.encode(["a cat"]).embeds)  # same seed, same weights
    assert a.identity_hash == b.identity_hash and a.identity["path"] != b.identity["path"]
    other = load_t5_encoder(_tiny_t5(tmp_path / "other", seed=1))
    assert other.identity_hash != b.identity_hash


def test_text_encoder_errors(tmp_path):
    cases = {None: "--text-encoder DIR", tmp_path / "missing": "not found"}
    (tmp_path / "empty").mkdir()
    cases[tmp_path / "empty"] = "no config.json"
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    cases[tmp_path / "pipe"] = "without text_encoder/"
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    cases[tmp_path / "bert"] = "holds a bert model"
    for path, words in cases.items():
        with pytest.raises(FlexcliError) as e:
            load_t5_encoder(path)
        assert words in str(e.value) and "\n" not in str(e.value) and "--text-encoder DIR" in str(e.value)


def test_encoding_cache_encodes_each_caption_once(tmp_path):
    enc = load_t5_encoder(_tiny_t5(tmp_path / "t5"))
    calls = []
    original = enc.encode
    enc.encode = lambda prompts: (calls.append(list(prompts)), original(prompts))[1]
    cache = EncodingCache()
    first = cache.encode(enc, ["a cat", "blue sky", "a cat"])
    second = cache.encode(enc, ["blue sky", "the dog"])
    assert calls == [["a cat", "blue sky"], ["the dog"]]
    assert (cache.misses, cache.hits, len(cache)) == (3, 2, 3)
    direct = original(["a cat", "blue sky", "a cat", "the dog"])
    assert torch.equal(first.embeds, direct.embeds[:3]) and torch.equal(second.embeds[1], direct.embeds[3])
    assert torch.equal(first.mask, direct.mask[:3])
    enc.max_length = 16  # another max length is another key
    assert cache.encode(enc, ["a cat"]).embeds.shape[1] == 16 and calls[-1] == ["a cat"]
    small = EncodingCache(max_entries=2)
    small.encode(enc, ["a", "b", "c"])
    assert len(small) == 3  # never evicts rows of the current call
    small.encode(enc, ["d"])
    assert len(small) == 2


def _file(tmp_path, name, **tensors):
    from safetensors.torch import save_file

    meta = tensors.pop("meta", {})
    save_file(tensors, str(tmp_path / name), metadata=meta)
    return tmp_path / name


def test_prompt_embeds_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    neg = TextEncoding(torch.randn(1, 4, 16, generator=g), torch.tensor([[1, 0, 0, 0]]), [""])
    enc = TextEncoding(torch.randn(2, 4, 16, generator=g), mask, ["a cat", "a dog"], neg)
    save_prompt_embeds(tmp_path / "e.safetensors", enc, {"kind": "t5", "sha256": "x"})
    back = load_prompt_embeds(tmp_path / "e.safetensors", caption_channels=16)
    assert torch.equal(back.embeds, enc.embeds) and torch.equal(back.mask, mask) and back.prompts == enc.prompts
    assert torch.equal(back.negative.embeds, neg.embeds) and back.negative.prompts == [""]
    bare = _file(tmp_path, "bare.safetensors", prompt_embeds=enc.embeds, prompt_attention_mask=mask)
    assert load_prompt_embeds(bare).prompts is None


def test_prompt_embeds_bad_inputs(tmp_path):
    e3, m = torch.zeros(2, 4, 16), torch.ones(2, 4, dtype=torch.long)
    cases = {
        _file(tmp_path, "wide.safetensors", prompt_embeds=torch.zeros(2, 4, 32), prompt_attention_mask=m):
            "32-wide but the model's caption_channels is 16",
        _file(tmp_path, "len.safetensors", prompt_embeds=e3, prompt_attention_mask=torch.ones(2, 5)):
            "lengths do not match",
        _file(tmp_path, "empty.safetensors", prompt_embeds=torch.zeros(0, 4, 16),
              prompt_attention_mask=torch.ones(0, 4)): "holds no prompts",
        _file(tmp_path, "nomask.safetensors", prompt_embeds=e3): "missing 'prompt_attention_mask'",
        _file(tmp_path, "zero.safetensors", prompt_embeds=e3, prompt_attention_mask=torch.zeros(2, 4)):
            "no unmasked token",
        _file(tmp_path, "count.safetensors", prompt_embeds=e3, prompt_attention_mask=m,
              meta={"prompts": json.dumps(["only one"])}): "1 prompts in the metadata for 2",
        _file(tmp_path, "neg.safetensors", prompt_embeds=e3, prompt_attention_mask=m,
              negative_prompt_embeds=torch.zeros(3, 4, 16), negative_prompt_attention_mask=torch.ones(3, 4)):
            "3 negative prompt rows for 2 prompts",
    }
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    cases[tmp_path / "junk.safetensors"] = "not a readable safetensors"
    cases[tmp_path / "absent.safetensors"] = "not found"
    for path, words in cases.items():
        with pytest.raises(FlexcliError) as e:
            load_prompt_embeds(path, caption_channels=16)
        assert words in str(e.value) and "\n" not in str(e.value) and e.value.fix, path
