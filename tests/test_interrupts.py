"""Issue #17, interrupted runs and races, with real processes: SIGINT/SIGTERM end a run with one line, exit
130/143 and no temporaries; a SIGKILL'd run's leftovers go with the next run over the same output; two
processes writing one output give exactly one winner and one clear error."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from distill_helpers import latent_shard, tiny_flex
from flexcli.cli import app
from flexcli.io.atomic import atomic_path, remove_stale
from flexcli.quickstart import tiny_checkpoint
from flexcli.train.logs import read_losses

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    return {"plain": tiny_checkpoint(d / "dit.safetensors"), "flex": tiny_flex(d / "flex.safetensors"),
            "lat": latent_shard(d / "lat.npz")}


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flexcli", *map(str, args)], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".flexcli-" in p.name)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _patched_cli(patch: str, *args) -> subprocess.Popen:
    """`flexcli ARGS` in a subprocess, with `patch` (Python) run first, e.g. to die at a chosen point."""
    script = f"{patch}\nfrom flexcli.cli import app\napp({[str(a) for a in args]!r})\n"
    return subprocess.Popen([sys.executable, "-c", script], env=ENV, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig,code,words", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "stopped by SIGTERM")])
@pytest.mark.parametrize("cmd", ["sample", "flexify"])
def test_signal_while_writing_leaves_nothing(inputs, tmp_path, monkeypatch, request, cmd, sig, code, words):
    """A real SIGINT / SIGTERM (sent to this process) while the output is being written: one line, exit
    130 / 143, no output, no temporary, no lock."""
    # a shell starts background jobs (`cmd &`, nohup) with SIGINT ignored, and flexcli then leaves it ignored;
    # this test needs Python's own SIGINT handler, as in a terminal
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))

    def signal_now(*args, **kwargs):
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the handler raises before this ends

    if cmd == "sample":
        monkeypatch.setattr("flexcli.sampling.sharding.finalize_folder", signal_now)
        args = ["sample", inputs["flex"], "-o", tmp_path / "out", "--steps", "2", "-n", "1"]
    else:
        monkeypatch.setattr("safetensors.torch.save_file", signal_now)
        args = ["flexify", inputs["plain"], "-p", "4", "-o", tmp_path / "o.safetensors"]
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == code and res.stdout == "", res.output
    assert res.stderr.strip().splitlines()[-1] == f"error: {words}; no output was written"
    assert "Traceback" not in res.output and os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the CLI's handler is gone again


def test_sigkilled_flexify_is_cleaned_by_the_next_run(inputs, tmp_path):
    """Killed while writing its output (the model's full-size temporary is on disk): the next flexify over the
    same output removes the temporary and the stale lock."""
    out = tmp_path / "o.safetensors"
    proc = _patched_cli("import os, signal, safetensors.torch as st\nreal = st.save_file\n"
                        "def save_file(*a, **k):\n    real(*a, **k)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
                        "st.save_file = save_file", "flexify", inputs["plain"], "-p", "4", "-o", out)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, err
    left = _temporaries(tmp_path)
    tmp = [n for n in left if n.startswith(f".o.safetensors.flexcli-{proc.pid}-") and n.endswith(".tmp")]
    assert len(tmp) == 1 and (tmp_path / tmp[0]).stat().st_size > 100_000 and ".o.safetensors.flexcli-lock" in left
    assert not out.exists()
    res = runner.invoke(app, ["flexify", str(inputs["plain"]), "-p", "4", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert os.listdir(tmp_path) == ["o.safetensors"]


def test_sigkilled_sample_is_cleaned_by_the_next_run(inputs, tmp_path):
    proc = _patched_cli("import os, signal\nimport flexcli.sampling.sharding as s\n"
                        "s.finalize_folder = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)",
                        "sample", inputs["flex"], "-o", tmp_path / "out", "--steps", "2", "-n", "2")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, err
    left = _temporaries(tmp_path)
    assert ".out.flexcli-lock" in left and any(n.startswith(f".out.flexcli-{proc.pid}-") for n in left), left
    res = runner.invoke(app, ["sample", str(inputs["flex"]), "-o", str(tmp_path / "out"), "--steps", "2", "-n", "1"])
    assert res.exit_code == 0, res.output
    assert os.listdir(tmp_path) == ["out"] and "run.json" in os.listdir(tmp_path / "out")


def test_concurrent_writers_one_winner(inputs, tmp_path):
    """Two flexify processes, one output: the one that comes second fails at once (with or without --force),
    naming the first, which finishes. Exactly one winner, nothing lost silently."""
    out, sync = tmp_path / "o.safetensors", tmp_path.parent / f"{tmp_path.name}-sync"
    sync.mkdir()
    first = _patched_cli(f"import os, time, safetensors.torch as st\nreal = st.save_file\n"
                         f"def save_file(*a, **k):\n    open({str(sync / 'writing')!r}, 'w').close()\n"
                         f"    while not os.path.exists({str(sync / 'go')!r}):\n        time.sleep(0.02)\n"
                         f"    real(*a, **k)\nst.save_file = save_file",
                         "flexify", inputs["plain"], "-p", "4", "-o", out)
    _wait_for(lambda: (sync / "writing").exists(), first, "the first writer started writing")
    for extra in ([], ["--force"]):
        res = runner.invoke(app, ["flexify", str(inputs["plain"]), "-p", "8", "-o", str(out), *extra])
        assert res.exit_code == 2 and res.stdout == "", res.output
        assert res.stderr.strip() == (f"error: output {out} is being written by another flexcli process (pid "
                                      f"{first.pid}); wait for it to finish, or choose another -o")
    (sync / "go").touch()
    stdout, err = first.communicate(timeout=180)
    assert first.returncode == 0 and stdout.strip() == str(out), err
    assert os.listdir(tmp_path) == ["o.safetensors"]
    res = runner.invoke(app, ["info", str(out), "--json"])
    assert '"patch_sizes": [\n    2,\n    4\n  ]' in res.stdout  # the first writer's output (-p 4), not -p 8


# --------------------------------------------------------------------------------------------------
def test_sigterm_during_distill_names_the_checkpoint_and_resume_works(inputs, tmp_path):
    run = tmp_path / "run"
    proc = _start("distill", inputs["flex"], "-o", run, "--data", inputs["lat"], "--steps", "100000",
                  "--batch-size", "8", "--lr", "1e-3", "--ckpt-every", "3", "--no-progress")
    _wait_for(lambda: (run / "state.pt").exists() and (run / "loss.csv").exists()
              and len(read_losses(run / "loss.csv")) >= 4, proc, "the first checkpoint")
    # A second writer of the same run folder fails at once.
    res = runner.invoke(app, ["distill", str(inputs["flex"]), "-o", str(run), "--resume", "--no-progress"])
    assert res.exit_code == 2 and f"being written by another flexcli process (pid {proc.pid})" in res.stderr
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 143 and len(lines) == 1 and "stopped by SIGTERM" in lines[0], err
    step = int(torch.load(run / "state.pt", weights_only=True)["step"])
    assert f"the last checkpoint is {run / 'state.pt'} (step {step}); continue with: " in lines[0]
    assert _temporaries(run) == [] and _temporaries(tmp_path) == []
    stale = run / f".loss.png.flexcli-{_dead_pid()}-abcdefgh.tmp"  # as a kill during the plot leaves it
    stale.write_bytes(b"half a png")
    command = shlex.split(lines[0].split("continue with: ")[1])
    assert command[:2] == ["flexcli", "distill"] and "--resume" in command
    res = runner.invoke(app, [*command[1:], "--steps", str(step + 2), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert not stale.exists() and _temporaries(run) == [] and _temporaries(tmp_path) == []
    assert len(read_losses(run / "loss.csv")) == step + 2


def test_stale_temporaries_go_and_live_ones_stay(tmp_path):
    out = tmp_path / "x.bin"
    dead = tmp_path / f".x.bin.flexcli-{_dead_pid()}-aaaaaaaa.tmp"
    live = tmp_path / f".x.bin.flexcli-{os.getppid()}-bbbbbbbb.tmp"
    other = tmp_path / f".y.bin.flexcli-{_dead_pid()}-cccccccc.tmp"
    for p in (dead, live, other):
        p.write_bytes(b"")
    assert remove_stale(out) == [dead]
    with atomic_path(out) as tmp:
        assert f"flexcli-{os.getpid()}-" in tmp.name
        tmp.write_bytes(b"done")
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "x.bin"])
