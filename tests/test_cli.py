"""The CLI: flexify/info/export-lora work, and bad input gives one line, exit 2 and no output file."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from flexcli.cli import app
from flexcli.quickstart import tiny_checkpoint

runner = CliRunner()


@pytest.fixture
def ckpt(tmp_path):
    return tiny_checkpoint(tmp_path / "dit.safetensors")


def _ok(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res


def test_flexify_default_output_and_info(ckpt, tmp_path):
    res = _ok(["flexify", str(ckpt), "--weak-patch", "4", "--weak-patch", "8"])
    out = tmp_path / "dit-flex.safetensors"
    assert res.stdout.strip() == str(out) and out.exists()
    info = json.loads(_ok(["info", str(out), "--json"]).stdout)
    assert info["patch_sizes"] == [2, 4, 8] and info["flex"]["mode"] == "lora"
    assert info["flex"]["lora"]["rank"] == 32
    assert [r["tokens"] for r in info["cost"]] == [64, 16, 4]
    assert all(r["flops"] == 2 * r["macs"] and r["gflops"] == r["flops"] / 1e9 for r in info["cost"])
    assert info["params"]["added"] > 0 and info["source"]["layout"] == "original"
    text = _ok(["info", str(out)]).stdout
    assert "GMACs" in text and "GFLOPs" in text and "patch sizes: 2, 4, 8" in text
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_flexify_shared_mode_and_plain_info(ckpt, tmp_path):
    out = tmp_path / "shared.safetensors"
    _ok(["flexify", str(ckpt), "-p", "4", "--mode", "shared", "-o", str(out)])
    info = json.loads(_ok(["info", str(out), "--json"]).stdout)
    assert info["flex"]["mode"] == "shared" and info["flex"]["underlying_patch_size"] == 4
    plain = json.loads(_ok(["info", str(ckpt), "--json"]).stdout)
    assert plain["flex"] is None and plain["patch_sizes"] == [2] and plain["params"]["added"] == 0
    assert plain["inferred"]["num_heads"] == "named config"


def test_export_lora(ckpt, tmp_path):
    flex = tmp_path / "f.safetensors"
    _ok(["flexify", str(ckpt), "-p", "4", "-o", str(flex), "--lora-rank", "8"])
    res = _ok(["export-lora", str(flex), "-o", str(tmp_path / "adapters")])
    assert res.stdout.split() == [str(tmp_path / "adapters" / "p4")]
    assert json.loads((tmp_path / "adapters" / "p4" / "adapter_config.json").read_text())["r"] == 8


# ---------------------------------------------------------------------------------------------------
def _bad(args, *expected_words, leftover_dir=None):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output
    for w in expected_words:
        assert w in lines[0], lines[0]
    return lines[0]


def _no_outputs(folder, allowed):
    assert sorted(os.listdir(folder)) == sorted(allowed)


def test_missing_file(tmp_path):
    _bad(["flexify", str(tmp_path / "nope.safetensors"), "-p", "4"], "not found", "check the path")
    _no_outputs(tmp_path, [])


def test_non_safetensors_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello, not a checkpoint")
    _bad(["flexify", str(f), "-p", "4"], "neither a safetensors file nor a PyTorch checkpoint")
    g = tmp_path / "fake.safetensors"
    g.write_text("hello, not a checkpoint either")
    _bad(["flexify", str(g), "-p", "4"], "not a readable safetensors file", "re-download")
    _no_outputs(tmp_path, ["notes.txt", "fake.safetensors"])


def test_truncated_safetensors(ckpt, tmp_path):
    data = ckpt.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 1000])
    _bad(["flexify", str(cut), "-p", "4"], "not a readable safetensors file", "complete")
    _no_outputs(tmp_path, ["dit.safetensors", "cut.safetensors"])


def test_state_dict_that_is_not_a_dit(tmp_path):
    f = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, str(f))
    _bad(["flexify", str(f), "-p", "4"], "does not hold a DiT state dict", "diffusers")
    p = tmp_path / "unet.pt"
    torch.save({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, p)
    _bad(["flexify", str(p), "-p", "4"], "does not hold a DiT state dict")
    _no_outputs(tmp_path, ["unet.safetensors", "unet.pt"])


@pytest.mark.parametrize("patch,words", [("3", ("does not divide", "16x16")), ("2", ("equals the pretrained",)),
                                         ("32", ("does not divide",))])
def test_bad_weak_patch(ckpt, tmp_path, patch, words):
    _bad(["flexify", str(ckpt), "-p", patch], *words)
    _no_outputs(tmp_path, ["dit.safetensors"])


def test_existing_output_without_force(ckpt, tmp_path):
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"keep me")
    _bad(["flexify", str(ckpt), "-p", "4", "-o", str(out)], "already exists", "--force")
    assert out.read_bytes() == b"keep me"
    _ok(["flexify", str(ckpt), "-p", "4", "-o", str(out), "--force"])
    assert out.read_bytes() != b"keep me"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_directory_as_user(ckpt, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        _bad(["flexify", str(ckpt), "-p", "4", "-o", str(ro / "x.safetensors")], "not writable")
    finally:
        ro.chmod(0o700)


def test_unwritable_directory(ckpt, tmp_path):
    """A missing or read-only output folder (root ignores permissions, so use a path under a file)."""
    _bad(["flexify", str(ckpt), "-p", "4", "-o", str(tmp_path / "missing" / "x.safetensors")], "does not exist")
    blocker = tmp_path / "file"
    blocker.write_text("")
    _bad(["flexify", str(ckpt), "-p", "4", "-o", str(blocker / "x.safetensors")])
    ro = "/proc/flexcli-test.safetensors"
    _bad(["flexify", str(ckpt), "-p", "4", "-o", ro], "not writable")
    _no_outputs(tmp_path, ["dit.safetensors", "file"])


def test_real_console_script_prints_no_traceback(tmp_path):
    """The installed entry point, in a subprocess: one line on stderr, exit 2; a traceback with FLEXCLI_DEBUG=1."""
    cmd = [sys.executable, "-m", "flexcli.cli", "flexify", str(tmp_path / "missing.pt"), "-p", "4"]
    env = {k: v for k, v in os.environ.items() if k != "FLEXCLI_DEBUG"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    res = subprocess.run(cmd, capture_output=True, text=True, env={**env, "FLEXCLI_DEBUG": "1"})
    assert res.returncode == 2 and "Traceback" in res.stderr


def test_quickstart(tmp_path):
    res = _ok(["quickstart", "-o", str(tmp_path / "qs")])
    paths = res.stdout.split()
    assert len(paths) == 4 and all(os.path.exists(p) for p in paths)
    info = json.loads((tmp_path / "qs" / "info.json").read_text())
    assert info["patch_sizes"] == [2, 4, 8]


def test_flexify_does_not_call_metadata_values_guesses(tmp_path):
    """A flexcli checkpoint's config comes from its metadata: nothing is reported as inferred elsewhere."""
    from flexcli.builtin.demo import BASE

    res = _ok(["flexify", str(BASE), "-p", "8", "-o", str(tmp_path / "f.safetensors")])
    assert "not read from" not in res.stderr and "not from tensors" not in res.stderr, res.stderr


def test_error_lines_do_not_start_with_a_blank_line(tmp_path):
    """The progress display used to print an empty line before the error (rich, stderr not a terminal)."""
    for args in (["sample", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "s")],
                 ["demo", "--base", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "d")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
