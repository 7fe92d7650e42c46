"""Prompts for Wan through a local umT5 (issue #14): `--pipeline DIR` (its text_encoder/ and tokenizer/) or
`--text-encoder DIR` encodes as diffusers' WanPipeline does (prompts as written, padded to the model's text
length, umT5 through UMT5EncoderModel; Wan zeroes the padded states), so sampling from prompts equals sampling
from the embeddings WanPipeline.encode_prompt makes."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flexcli.cli import app
from flexcli.text import TextEncoding, save_prompt_embeds
from wan_helpers import flexified_wan_checkpoint

runner = CliRunner()
WORDS = ["a", "red", "cat", "on", "the", "mat", "blue", "sky", "dog"]


def _tiny_umt5(folder, width: int = 16):
    """A random 2-layer umT5 encoder (d_model 16, Wan's tiny text_dim) and a T5 tokenizer with a tiny vocabulary
    (built with `tokenizers`: sentencepiece is not installed)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in WORDS]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    T5TokenizerFast(tokenizer_object=tok, extra_ids=0, eos_token="</s>", unk_token="<unk>",
                    pad_token="<pad>").save_pretrained(folder / "tokenizer")
    torch.manual_seed(0)
    cfg = UMT5Config(vocab_size=len(vocab), d_model=width, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, dropout_rate=0.0)
    UMT5EncoderModel(cfg).save_pretrained(folder / "text_encoder")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("wan")
    _, _, flex = flexified_wan_checkpoint(d)  # text_len 8
    return flex, _tiny_umt5(d / "pipe"), d


def _sample(args, out):
    res = runner.invoke(app, ["sample", *args, "--out", str(out), "-n", "2", "--steps", "3", "--frames", "5",
                              "--height", "32", "--width", "32", "--schedule", "1/1", "--weak-patch", "1,4,4",
                              "--seed", "4"])
    assert res.exit_code == 0, res.output
    return json.loads((out / "run.json").read_text()), np.load(out / "latents.npz")["arr_0"]


def test_prompts_through_a_local_umt5_equal_wanpipelines_embeddings(setup, tmp_path):
    from diffusers import WanPipeline
    from transformers import AutoTokenizer, UMT5EncoderModel

    flex, pipe_dir, _ = setup
    prompts = ["A red cat on the mat", "blue sky"]
    record, ours = _sample([str(flex), "--prompt", prompts[0], "--prompt", prompts[1], "--pipeline", str(pipe_dir)],
                           tmp_path / "prompted")
    assert record["prompts"] == prompts and record["text_encoder"]["kind"] == "umt5"
    assert record["null_caption"] == "encoded negative prompt ''"
    pipe = WanPipeline(tokenizer=AutoTokenizer.from_pretrained(pipe_dir / "tokenizer"),
                       text_encoder=UMT5EncoderModel.from_pretrained(pipe_dir / "text_encoder"), vae=None,
                       scheduler=None, transformer=None)
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(prompts, "", max_sequence_length=8, device="cpu")
    assert not torch.equal(embeds[0], embeds[1]) and (embeds[1, 3:] == 0).all()  # trimmed, zero-padded
    ones = torch.ones(2, 8, dtype=torch.long)
    save_prompt_embeds(tmp_path / "pipe.safetensors", TextEncoding(embeds, ones, prompts,
                                                                   negative=TextEncoding(negative[:1], ones[:1].clone())))
    _, theirs = _sample([str(flex), "--prompt-embeds", str(tmp_path / "pipe.safetensors")], tmp_path / "embedded")
    assert np.abs(ours - theirs).max() <= 1e-6 * np.abs(theirs).max()
    again, same = _sample([str(flex), "--prompt", prompts[0], "--prompt", prompts[1], "--text-encoder",
                           str(pipe_dir)], tmp_path / "encoder-dir")  # a pipeline folder given as the encoder
    assert np.array_equal(same, ours)


def test_a_missing_text_encoder_is_one_line(setup, tmp_path):
    flex, _, _ = setup
    res = runner.invoke(app, ["sample", str(flex), "--prompt", "a cat", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "needs a text encoder" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
