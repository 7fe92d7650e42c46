"""Issue #17, bad input: every case is one line on stderr, exit code 2, no traceback and nothing written.

Each test runs the command shape a user types (CliRunner, in this process: fast); `_bad` checks the line and
that the output folder holds nothing new (no output, temporary or lock file).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from distill_helpers import latent_shard, tiny_flex
from flexcli.cli import app
from flexcli.quickstart import tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A plain tiny DiT, its flexified version, a latent shard and damaged variants, in a read-only place."""
    d = tmp_path_factory.mktemp("inputs")
    files = {"plain": tiny_checkpoint(d / "dit.safetensors"), "flex": tiny_flex(d / "flex.safetensors"),
             "lat": latent_shard(d / "lat.npz")}
    with safe_open(str(files["flex"]), "pt") as f:
        meta, tensors = json.loads(f.metadata()["flexcli"]), {k: f.get_tensor(k) for k in f.keys()}

    def variant(name, change):
        m, t = json.loads(json.dumps(meta)), dict(tensors)
        change(m, t)
        save_file(t, str(d / name), metadata={"flexcli": json.dumps(m)})
        files[name.split(".")[0]] = d / name

    variant("heads0.safetensors", lambda m, t: m["config"].update(num_heads=0))
    variant("heads7.safetensors", lambda m, t: m["config"].update(num_heads=7))
    variant("bogus.safetensors", lambda m, t: m["flex"].update(mode="bogus"))
    variant("abc.safetensors", lambda m, t: m["flex"].update(patch_sizes="abc"))
    variant("alphanan.safetensors", lambda m, t: m["flex"]["lora"].update(alpha=float("nan")))
    variant("noblock.safetensors", lambda m, t: t.pop("blocks.1.attn.qkv.weight"))
    sd = load_file(str(files["plain"]))
    save_file({k: v for k, v in sd.items() if k != "blocks.0.mlp.fc1.weight"}, str(d / "nofc1.safetensors"))
    sd["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    save_file(sd, str(d / "nan.safetensors"))
    files.update(nofc1=d / "nofc1.safetensors", nan=d / "nan.safetensors")
    return files


def _bad(args, *words, out_dir: Path | None = None, absent=()):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output and res.stdout == ""
    for w in words:
        assert w in lines[0], lines[0]
    if out_dir is not None:
        assert os.listdir(out_dir) == [], os.listdir(out_dir)  # nothing half-written, no temporary, no lock
    for w in absent:
        assert w not in lines[0], lines[0]
    return lines[0]


def _sample(inputs, tmp_path, *extra, ckpt="flex"):
    return ["sample", inputs[ckpt], "-o", tmp_path / "out", "--steps", "2", "-n", "1", *extra]


def _distill(inputs, tmp_path, *extra):
    return ["distill", inputs["flex"], "--data", inputs["lat"], "--steps", "2", "--no-progress",
            "-o", tmp_path / "run", *extra]


# --------------------------------------------------------------------------------------------------
# internal errors that are user errors: damaged checkpoints
@pytest.mark.parametrize("name,cmd,words", [
    ("heads0", "info", ("num_heads = 0",)),
    ("heads7", "info", ("num_heads 7 does not divide", "64")),
    ("heads7", "sample", ("num_heads 7 does not divide",)),
    ("bogus", "info", ("mode 'bogus'", "lora, shared")),
    ("abc", "info", ("patch_sizes 'abc'",)),
    ("abc", "sample", ("patch_sizes 'abc'",)),
    ("alphanan", "export-lora", ("alpha nan",)),
    ("noblock", "info", ("missing", "blocks.1.attn.qkv.weight")),
    ("noblock", "sample", ("missing", "blocks.1.attn.qkv.weight")),
    ("nofc1", "info", ("missing", "blocks.0.mlp.fc1.weight")),
    ("nofc1", "flexify", ("missing", "blocks.0.mlp.fc1.weight")),
    ("nofc1", "sample", ("missing", "blocks.0.mlp.fc1.weight")),
])
def test_damaged_checkpoint(inputs, tmp_path, name, cmd, words):
    args = {"info": ["info", inputs[name]], "sample": _sample(inputs, tmp_path, ckpt=name),
            "flexify": ["flexify", inputs[name], "-p", "4", "-o", tmp_path / "out.safetensors"],
            "export-lora": ["export-lora", inputs[name], "-o", tmp_path / "out"]}[cmd]
    _bad(args, *words, out_dir=tmp_path)


@pytest.mark.parametrize("cmd", ["flexify", "sample", "info"])
def test_nonfinite_weights_are_an_error(inputs, tmp_path, cmd):
    args = {"info": ["info", inputs["nan"]], "sample": _sample(inputs, tmp_path, ckpt="nan"),
            "flexify": ["flexify", inputs["nan"], "-p", "4", "-o", tmp_path / "out.safetensors"]}[cmd]
    _bad(args, "non-finite weights", "blocks.0.attn.qkv.weight", "--allow-nonfinite", out_dir=tmp_path)


def test_allow_nonfinite_lets_it_through(inputs, tmp_path):
    res = runner.invoke(app, ["flexify", str(inputs["nan"]), "-p", "4", "-o", str(tmp_path / "o.safetensors"),
                              "--allow-nonfinite"])
    assert res.exit_code == 0, res.output
    assert os.listdir(tmp_path) == ["o.safetensors"]


# --------------------------------------------------------------------------------------------------
# devices, counts, seeds, ranks
@pytest.mark.parametrize("device,words", [
    ("nonsense", ("--device 'nonsense' is not a device", "cpu, cuda")),
    ("meta", ("--device meta", "use cpu")),
    pytest.param("cuda", ("CUDA is not available", "--device cpu"),
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    pytest.param("cuda:99", ("cuda:99",), marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
])
def test_sample_bad_device(inputs, tmp_path, device, words):
    _bad(_sample(inputs, tmp_path, "--device", device), *words, out_dir=tmp_path)


def test_sample_count_beyond_memory_names_a_count_that_fits(inputs, tmp_path):
    args = ["sample", inputs["flex"], "-o", tmp_path / "out", "--steps", "2", "-n", "1000000000000000"]
    _bad(args, "-n 1000000000000000", "for their outputs", "use -n", out_dir=tmp_path)


@pytest.mark.parametrize("extra,words", [
    (["--seed", str(2**64)], ("--seed 18446744073709551616 is beyond 64 bits",)),
    (["--seed", str(2**64 - 1), "-n", "2"], ("beyond 64 bits", "18446744073709551614")),
    (["--seed", "-1"], ("--seed -1 is below 0",)),
])
def test_sample_bad_seed(inputs, tmp_path, extra, words):
    _bad(_sample(inputs, tmp_path)[:-2] + extra, *words, out_dir=tmp_path)


def test_distill_seed_beyond_64_bits(inputs, tmp_path):
    _bad(_distill(inputs, tmp_path, "--seed", str(2**64)), "seed 18446744073709551616 is beyond 64 bits",
         out_dir=tmp_path)


@pytest.mark.parametrize("extra,words", [
    (["--lora-rank", "1000000000"], ("--lora-rank 1000000000", "model width 64")),
    (["--lora-rank", "0"], ("--lora-rank 0 is not positive",)),
    (["--lora-alpha", "nan"], ("--lora-alpha nan is not a number",)),
    (["--lora-alpha", "-1"], ("--lora-alpha -1.0 is not positive",)),
])
def test_flexify_bad_lora_settings(inputs, tmp_path, extra, words):
    _bad(["flexify", inputs["plain"], "-p", "4", "-o", tmp_path / "o.safetensors", *extra], *words,
         out_dir=tmp_path)


def test_distill_read_only_out(inputs, tmp_path):
    _bad(_distill(inputs, tmp_path)[:-2] + ["-o", "/proc/flexcli-distill"], "not writable", out_dir=tmp_path)


def test_quickstart_read_only_out():
    _bad(["quickstart", "-o", "/proc/flexcli-quickstart"], "not writable")


def test_sample_out_is_a_file_fails_before_any_work(inputs, tmp_path):
    (tmp_path / "out").write_text("keep")
    _bad(_sample(inputs, tmp_path, "--force"), "is a file", "choose another -o")
    assert os.listdir(tmp_path) == ["out"] and (tmp_path / "out").read_text() == "keep"


def test_flexify_out_is_a_folder(inputs, tmp_path):
    (tmp_path / "o.safetensors").mkdir()
    _bad(["flexify", inputs["plain"], "-p", "4", "-o", tmp_path / "o.safetensors", "--force"], "is a folder")
    assert os.listdir(tmp_path) == ["o.safetensors"]


# --------------------------------------------------------------------------------------------------
# silent garbage: numbers
@pytest.mark.parametrize("extra,words", [
    (["--cfg-scale", "nan"], ("--cfg-scale nan is not a number",)),
    (["--cfg-scale", "inf"], ("--cfg-scale inf is not finite",)),
    (["--cfg-scale", "1e30"], ("--cfg-scale 1e+30 is above 100",)),
    (["--cfg-scale-weak", "nan"], ("--cfg-scale-weak nan is not a number",)),
    (["--guided-channels", "0"], ("--guided-channels 0 is not positive",)),
    (["--guided-channels", "-1"], ("--guided-channels -1 is not positive",)),
    (["--guided-channels", "99"], ("--guided-channels 99 is above 4", "1 to 4")),
    (["--eta", "nan"], ("--eta nan is not a number",)),
    (["--schedule", "-3"], ("'-3' is neither a count of powerful steps (0 to 2) nor P:N", "use x/y")),
    (["--schedule", "abc"], ("'abc' is neither a count of powerful steps (0 to 2) nor P:N", "e.g. 130/130")),
    (["--schedule", "4:150/130"], ("mixes the x/y and P:N forms",)),
])
def test_sample_bad_numbers(inputs, tmp_path, extra, words):
    _bad(_sample(inputs, tmp_path, *extra), *words, out_dir=tmp_path,
         absent=("negative",) + (("mixes",) if "4:150/130" not in extra else ()))


@pytest.mark.parametrize("extra,words", [
    (["--batch-size", "1000000000"], ("--batch-size 1000000000 needs about", "use --batch-size")),
    (["--data-limit", "0"], ("data_limit 0 is not positive", "leave data_limit out")),
    (["--data-limit", "-1"], ("data_limit -1 is not positive",)),
    (["--stop-after", "0"], ("--stop-after 0 is not positive",)),
    (["--weight-decay", "nan"], ("weight_decay nan is not a number",)),
    (["--lr", "nan"], ("lr nan is not a number",)),
])
def test_distill_bad_numbers(inputs, tmp_path, extra, words):
    _bad(_distill(inputs, tmp_path, *extra), *words, out_dir=tmp_path, absent=("negative",))


# --------------------------------------------------------------------------------------------------
# paths and modes
def test_symlink_loop_and_broken_link(tmp_path):
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop)
    _bad(["info", loop], "is a symlink loop")
    gone = tmp_path / "gone.safetensors"
    gone.symlink_to(tmp_path / "missing.safetensors")
    _bad(["flexify", gone, "-p", "4"], "broken symlink", "missing.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["gone.safetensors", "loop.safetensors"]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_honour_the_umask(inputs, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        res = runner.invoke(app, ["flexify", str(inputs["plain"]), "-p", "4", "-o", str(tmp_path / "f.safetensors")])
        assert res.exit_code == 0, res.output
        res = runner.invoke(app, [str(a) for a in _sample(inputs, tmp_path)])
        assert res.exit_code == 0, res.output
    finally:
        os.umask(old)
    assert (tmp_path / "f.safetensors").stat().st_mode & 0o777 == mode
    assert (tmp_path / "out").stat().st_mode & 0o777 == mode | 0o111 & ~umask
    assert (tmp_path / "out" / "run.json").stat().st_mode & 0o777 == mode
    assert sorted(os.listdir(tmp_path)) == ["f.safetensors", "out"]


def test_sample_batch_beyond_memory_names_a_batch_size(inputs, tmp_path, monkeypatch):
    """The outputs of -n 10000 fit in 1 GB, one batch of 10000 does not: the error names a batch size that
    fits (sampling runs in batches, so -n can stay)."""
    monkeypatch.setattr("flexcli.checks.available_memory", lambda dev=None: 2**30)
    line = _bad(["sample", inputs["flex"], "-o", tmp_path / "out", "--steps", "2", "-n", "10000", "--batch-size",
                 "10000"], "--batch-size 10000 needs about", "per forward pass", "1 GB available", out_dir=tmp_path)
    fit = int(line.split("use --batch-size ")[1].split()[0])
    assert 1 <= fit < 10000, line


@pytest.mark.parametrize("stop,words", [
    (5, ("error: interrupted; the last checkpoint is", "state.pt (step 4); continue with: flexcli distill",
         "--resume")),
    (1, ("error: interrupted; no checkpoint was written yet; start over with: flexcli distill", "config.yaml",
         "--force")),
])
def test_distill_interrupt_names_the_checkpoint(inputs, tmp_path, monkeypatch, stop, words):
    """Ctrl-C in a run says exactly which checkpoint exists and the command that goes on (not "no output was
    written" while checkpoints are there); no temporaries are left."""
    from flexcli.train.step import Trainer

    real = Trainer.step

    def step(self, s):
        if s + 1 == stop:
            raise KeyboardInterrupt
        return real(self, s)

    monkeypatch.setattr(Trainer, "step", step)
    res = runner.invoke(app, [str(a) for a in _distill(inputs, tmp_path, "--steps", "8", "--ckpt-every", "2")])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 130 and len(lines) == 1 and "Traceback" not in res.output, res.output
    for w in words:
        assert w in lines[0], lines[0]
    left = os.listdir(tmp_path / "run")
    assert ("state.pt" in left) == (stop == 5) and not [n for n in left if ".flexcli-" in n], left
