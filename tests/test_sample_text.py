"""The sampler's text plumbing (shared by the text families): prompts cycled over samples, the null caption,
and the bad inputs that need no text model."""
import pytest
import torch
from typer.testing import CliRunner

from conftest import random_dit
from flexcli.cli import app
from flexcli.errors import FlexcliError
from flexcli.io.checkpoint import save_checkpoint
from flexcli.sampling.conditions import Prompts, read_prompts

runner = CliRunner()


def _prompts(null_mask):
    embeds = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    null = torch.full((1, 3, 4), -1.0)
    return Prompts(["a", "b"], embeds, mask, null, null_mask, "test", None, num_samples=5)


def test_prompts_cycle_over_samples_and_the_learned_null_takes_the_prompt_mask():
    p = _prompts(None)
    cond, null = p.batch([0, 1, 2, 3], "cpu")
    assert torch.equal(cond.embeds, p.embeds[[0, 1, 0, 1]]) and torch.equal(cond.mask, p.mask[[0, 1, 0, 1]])
    assert torch.equal(null.embeds, torch.full((4, 3, 4), -1.0)) and torch.equal(null.mask, cond.mask)
    assert p.record()["prompts"] == ["a", "b", "a", "b", "a"]


def test_an_encoded_null_keeps_its_own_mask():
    p = _prompts(torch.tensor([[1, 0, 0]]))
    _, null = p.batch([1, 0], "cpu")
    assert torch.equal(null.mask, torch.tensor([[1, 0, 0], [1, 0, 0]]))


def test_read_prompts(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a red shoe\n\n  a blue bag  \n")
    assert read_prompts(None, str(f)) == ["a red shoe", "a blue bag"]
    assert read_prompts(["x"], None) == ["x"]
    f.write_text("\n \n")
    with pytest.raises(FlexcliError, match="holds no prompts"):
        read_prompts(None, str(f))


@pytest.mark.parametrize("args,words", [
    (["--prompt", "a cat"], "--prompt given to a class-conditional checkpoint"),
    (["--text-encoder", "minilm"], "--text-encoder given to a class-conditional checkpoint"),
])
def test_text_flags_on_a_class_checkpoint(tmp_path, args, words):
    ckpt = save_checkpoint(random_dit(), tmp_path / "dit.safetensors")
    res = runner.invoke(app, ["sample", str(ckpt), "--out", str(tmp_path / "o"), "--steps", "2", *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0]
    assert not (tmp_path / "o").exists()


def test_prompt_and_prompts_file_together(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("x\n")
    res = runner.invoke(app, ["sample", "nothing.safetensors", "--out", str(tmp_path / "o"), "--prompt", "a",
                              "--prompts-file", str(f)])
    assert res.exit_code == 2 and "--prompt and --prompts-file are both given" in res.stderr
