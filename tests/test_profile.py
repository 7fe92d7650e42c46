"""`flexcli profile` (issue #5): CSV schema, exact FLOPs columns, timing, plots from the CSV, bad input."""
import csv
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from flexcli.api import flexify_checkpoint, load_model
from flexcli.cli import app
from flexcli.errors import FlexcliError
from flexcli.models.configs import named_config
from flexcli.profiling import latency as lat
from flexcli.compute import forward_cost, model_cost
from flexcli.profiling.spec import FLOPS_COLUMNS, META_COLUMNS, TIMING_COLUMNS, Shape, random_model
from flexcli.profiling.plots import plot_latency_vs_flops, plot_roofline, with_ratios
from flexcli.quickstart import tiny_checkpoint

runner = CliRunner()
FAST = ["--repeats", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def flex_ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    base = tiny_checkpoint(folder / "dit.safetensors")
    out, _, _ = flexify_checkpoint(base, [4], folder / "flex.safetensors", lora_rank=8)
    return out


def _ok(args):
    res = runner.invoke(app, ["profile", *args])
    assert res.exit_code == 0, res.output
    return res


def _rows(path):
    return pd.read_csv(path)


# ------------------------------------------------------------------------------------------------------
def test_analytic_dit_xl2_gives_the_dit_papers_gmacs(tmp_path):
    res = _ok(["--model", "DiT-XL/2", "--patch-sizes", "2,4", "--analytic", "-o", str(tmp_path / "xl")])
    assert res.stdout.split() == [str(tmp_path / "xl" / "profile.csv")]  # no plots without timings
    df = _rows(tmp_path / "xl" / "profile.csv")
    assert list(df.columns) == FLOPS_COLUMNS + META_COLUMNS and "latency_ms" not in df.columns
    cfg = named_config("DiT-XL/2")
    for p, published, half_unit in ((2, 118.6, 0.05), (4, 29.05, 0.01)):  # the figures and precision
        row = df[df.patch_size == p].iloc[0]
        assert row.macs == forward_cost(cfg, p).macs and row.flops == 2 * row.macs  # exact integers
        assert row.batch_flops == forward_cost(cfg, p, batch=2).flops
        assert abs(row.gmacs - published) < half_unit, (p, row.gmacs)
    assert "118.62 GMACs" in res.stderr and "29.04 GMACs" in res.stderr
    # 256 and 1024 tokens at the paper's T2I size (128x128 latent), without building the 1.8B model's weights
    _ok(["--depth", "24", "--width", "2048", "--latent", "128", "--seq-lengths", "4096,1024", "--analytic",
         "-o", str(tmp_path / "t2i.csv")])
    t2i = _rows(tmp_path / "t2i.csv")
    big = named_config("DiT-XL/2", depth=24, hidden_size=2048, input_size=128)
    assert list(t2i.patch_size) == [2, 4] and list(t2i.tokens) == [4096, 1024]
    assert list(t2i.macs) == [forward_cost(big, 2).macs, forward_cost(big, 4).macs]


def test_csv_schema_and_exact_flops_columns(tmp_path, one_thread):
    res = _ok(["--model", "DiT-Tiny/2", "--patch-sizes", "2,4", *FAST, "-o", str(tmp_path / "out")])
    paths = res.stdout.split()
    assert [os.path.basename(p) for p in paths] == ["profile.csv", "roofline.png", "latency_vs_flops.png"]
    assert all(os.path.getsize(p) > 0 for p in paths)
    with open(paths[0]) as f:
        header = next(csv.reader(f))
    assert header == FLOPS_COLUMNS + TIMING_COLUMNS + META_COLUMNS
    for needed in ("model", "device", "device_name", "dtype", "compile", "attention_backend", "torch", "batch",
                   "patch_size", "tokens", "macs", "flops", "gmacs", "gflops", "latency_ms", "latency_ms_p25",
                   "latency_ms_p75", "achieved_tflops", "peak_tflops", "pct_of_peak", "arithmetic_intensity",
                   "param_bytes", "peak_mem_mb", "lora"):
        assert needed in header, needed
    df = _rows(paths[0])
    cfg = named_config("DiT-Tiny/2")
    assert list(df.patch_size) == [2, 4] and list(df.tokens) == [64, 16]
    for _, r in df.iterrows():
        one, two = forward_cost(cfg, int(r.patch_size)), forward_cost(cfg, int(r.patch_size), batch=2)
        assert (r.macs, r.flops, r.batch_macs, r.batch_flops) == (one.macs, one.flops, two.macs, two.flops)
        assert r.gmacs == one.gmacs and r.gflops == one.gflops
        params = sum(p.numel() for p in random_model(cfg, Shape(int(r.patch_size), 16, 16),
                                                     torch.device("meta"), 0).parameters())
        assert r.param_bytes == 4 * params and r.arithmetic_intensity == r.batch_flops / r.param_bytes
        assert r.latency_ms_p25 <= r.latency_ms <= r.latency_ms_p75 and r.latency_ms_min <= r.latency_ms
        assert math.isclose(r.achieved_tflops, r.batch_flops / (r.latency_ms / 1e3) / 1e12)
        assert (r.device, r["dtype"], r.compile, r.batch, r.repeats, r.warmup) == ("cpu", "fp32", False, 2, 2, 1)
        assert r.attention_backend.endswith("(cpu)") and r.torch == torch.__version__ and r.lora == "none"
        # no known CPU peak and no peak memory on the CPU: left empty, and the row says why
        assert math.isnan(r.peak_tflops) and math.isnan(r.pct_of_peak) and math.isnan(r.peak_mem_mb)
        assert "CUDA only" in r.notes and "--peak-tflops" in r.notes
    assert "no CUDA device found" in res.stderr  # the default device was chosen with a notice


def test_latency_grows_with_sequence_length(tmp_path, one_thread):
    _ok(["--model", "DiT-Mini/2", "--latent", "32", "--seq-lengths", "16,256", "--repeats", "7", "--warmup", "2",
         "-o", str(tmp_path / "mini.csv")])
    df = _rows(tmp_path / "mini.csv")
    assert list(df.tokens) == [16, 256] and list(df.patch_size) == [8, 2]
    short, long = df.latency_ms
    assert df.batch_flops[1] > 15 * df.batch_flops[0]
    assert long > 2 * short, (short, long)  # medians over 7 repeats; the FLOPs differ 18x


def test_rectangular_and_fitted_latents(tmp_path, one_thread):
    _ok(["--model", "DiT-Tiny/2", "--seq-lengths", "24,64", "--fit-latent", "--repeats", "1", "--warmup", "0",
         "-o", str(tmp_path / "fit.csv")])
    df = _rows(tmp_path / "fit.csv")
    cfg = named_config("DiT-Tiny/2")
    assert list(df.latent) == ["8x12", "16x16"] and list(df.tokens) == [24, 64] and set(df.patch_size) == {2}
    assert df.macs[0] == forward_cost(cfg, 2, input_size=(8, 12)).macs and "rectangular latent" in df.notes[0]
    assert df.macs[1] == forward_cost(cfg, 2).macs
    # the rectangular model runs, and the analytic count equals torch's own counter on it
    model = random_model(cfg, Shape(2, 8, 12), torch.device("cpu"), 0)
    x = torch.randn(2, 4, 8, 12)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(x, torch.tensor([1, 500]), torch.tensor([3, 10]))
    assert out.shape == (2, 8, 8, 12)
    attention = 2 * 2 * cfg.depth * 2 * 24 * 24 * cfg.hidden_size  # torch counts CPU SDPA as zero
    assert counter.get_total_flops() + attention == forward_cost(cfg, 2, 2, input_size=(8, 12)).flops
    # the paper's T2V token count is not a square: a 176x192 token grid
    _ok(["--depth", "24", "--width", "2048", "--seq-lengths", "33792", "--fit-latent", "--analytic",
         "-o", str(tmp_path / "t2v.csv")])
    assert _rows(tmp_path / "t2v.csv").latent[0] == "352x384"


def test_plots_are_drawn_from_the_csv_alone(tmp_path, one_thread):
    folder = tmp_path / "run"
    _ok(["--model", "DiT-Tiny/2", "--patch-sizes", "2,4,8", *FAST, "--peak-tflops", "2",
         "--peak-bandwidth", "0.1", "-o", str(folder)])
    for png in ("roofline.png", "latency_vs_flops.png"):
        (folder / png).unlink()
    script = ("import sys; from flexcli.profiling.plots import plot_roofline, plot_latency_vs_flops; "
              f"plot_roofline({str(folder / 'profile.csv')!r}, {str(tmp_path / 'r.png')!r}); "
              f"plot_latency_vs_flops({str(folder / 'profile.csv')!r}, {str(tmp_path / 'l.png')!r}); "
              "assert 'torch' not in sys.modules, 'plots imported torch'")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for png in ("r.png", "l.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    df = with_ratios(_rows(folder / "profile.csv"))
    assert list(df.flops_ratio) == [1.0, df.batch_flops[1] / df.batch_flops[0], df.batch_flops[2] / df.batch_flops[0]]
    assert df.latency_ratio[0] == 1.0 and df.pct_of_peak[0] == 100 * df.achieved_tflops[0] / 2
    _ok(["--model", "DiT-Tiny/2", "--analytic", "-o", str(tmp_path / "a.csv")])
    with pytest.raises(FlexcliError, match="no measured latencies"):
        plot_roofline(tmp_path / "a.csv", tmp_path / "x.png")
    with pytest.raises(FlexcliError, match="no measured latencies"):
        plot_latency_vs_flops(tmp_path / "a.csv", tmp_path / "x.png")


def test_flex_checkpoint_gives_merged_and_unmerged_rows(flex_ckpt, tmp_path, one_thread):
    _ok(["-c", str(flex_ckpt), "--repeats", "1", "--warmup", "0", "-o", str(tmp_path / "flex.csv")])
    df = _rows(tmp_path / "flex.csv")
    assert sorted(zip(df.lora, df.patch_size)) == [("merged", 2), ("merged", 4), ("unmerged", 2), ("unmerged", 4)]
    model = load_model(flex_ckpt)
    cost = {(r.lora, r.patch_size): r.macs for _, r in df.iterrows()}
    for p in (2, 4):
        assert cost[("unmerged", p)] == model_cost(model, p).macs == forward_cost(model.config, p, lora_rank=8).macs
        assert cost[("merged", p)] == model_cost(model, p, merged=True).macs == forward_cost(model.config, p).macs
    assert cost[("unmerged", 4)] > cost[("merged", 4)] and cost[("unmerged", 2)] == cost[("merged", 2)]
    assert set(df.model) == {"flex.safetensors"} and df.latency_ms.notna().all()


def test_known_peaks_and_timer():
    assert lat.known_peaks("NVIDIA H100 80GB HBM3", "bf16") == (989.0, 3.35)
    assert lat.known_peaks("NVIDIA H200", "fp16") == (989.0, 4.8)
    assert lat.known_peaks("NVIDIA H100 PCIe", "bf16") == (756.0, 2.0)
    tflops, tbps = lat.known_peaks("NVIDIA H100 80GB HBM3", "fp32")
    assert math.isnan(tflops) and tbps == 3.35  # no fp32 peak: --peak-tflops
    assert all(math.isnan(v) for v in lat.known_peaks("Intel(R) Xeon(R)", "bf16"))
    calls = []
    timing = lat.measure(lambda: calls.append(1), torch.device("cpu"), warmup=3, repeats=5)
    assert len(calls) == 8 and len(timing.samples_ms) == 5  # warm-up calls are run but not timed


def test_random_models_trace_as_one_graph():
    """What --compile asks for (fullgraph=True), traced by dynamo alone: no graph break on square or rectangular."""
    cfg = named_config("DiT-Tiny/2")
    for shape in (Shape(2, 16, 16), Shape(4, 8, 16)):
        torch._dynamo.reset()
        model = random_model(cfg, shape, torch.device("cpu"), 0)
        fn = torch.compile(lambda a, b, c: model(a, b, c, patch_size=shape.patch_size), fullgraph=True,
                           backend="eager")
        x, t, y = torch.randn(2, 4, shape.height, shape.width), torch.tensor([1, 2]), torch.tensor([3, 4])
        with torch.no_grad():
            assert torch.equal(fn(x, t, y), model(x, t, y, patch_size=shape.patch_size))
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------------------
def _bad(args, *words):
    res = runner.invoke(app, ["profile", *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output and res.stdout == ""
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(tmp_path):
    _bad(["--model", "DiT-Tiny/2", "--device", "cuda", "-o", str(tmp_path / "o")], "CUDA is not available",
         "--device cpu")
    assert os.listdir(tmp_path) == []


def test_sequence_length_no_patch_size_gives(tmp_path):
    _bad(["--model", "DiT-Tiny/2", "--seq-lengths", "64,50", "-o", str(tmp_path / "o")],
         "sequence length 50 is not given by any patch size of the 16x16 latent", "p2: 64", "--fit-latent")
    assert os.listdir(tmp_path) == []


def test_unknown_model(tmp_path):
    _bad(["--model", "DiT-Huge/2", "-o", str(tmp_path / "o")], "unknown model config 'DiT-Huge/2'", "DiT-XL/2")
    assert os.listdir(tmp_path) == []


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    _bad(["--model", "DiT-Tiny/2", "-o", str(blocker / "sub")], "not a directory")
    _bad(["--model", "DiT-Tiny/2", "-o", str(blocker / "p.csv")], "is a file")
    _bad(["--model", "DiT-Tiny/2", "-o", "/proc/flexcli-profile-test"], "not writable")
    _bad(["--model", "DiT-Tiny/2", "-o", str(blocker)], "is a file")
    assert os.listdir(tmp_path) == ["file"]


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("keep me")
    _bad(["--model", "DiT-Tiny/2", "--analytic", "-o", str(out)], "already exists", "--force")
    assert out.read_text() == "keep me"
    _ok(["--model", "DiT-Tiny/2", "--analytic", "-o", str(out), "--force"])
    assert out.read_text().startswith("kind,model")


@pytest.mark.parametrize("args,words", [
    (["--model", "DiT-Tiny/2", "--patch-sizes", "3"], ("patch size 3 does not divide the 16x16 latent",)),
    (["--model", "DiT-Tiny/2", "--seq-lengths", "64,abc"], ("not a list of positive integers",)),
    (["--model", "DiT-Tiny/2", "--patch-sizes", "2", "--seq-lengths", "64"], ("both given",)),
    (["--model", "DiT-Tiny/2", "--fit-latent"], ("--fit-latent needs --seq-lengths",)),
    (["--model", "DiT-Tiny/2", "--latent", "16", "--image-size", "128"], ("both given",)),
    (["--model", "DiT-Tiny/2", "--image-size", "100"], ("not a multiple of 8",)),
    (["--model", "DiT-Tiny/2", "--latent", "1x2x3"], ("is not a size",)),
    (["--model", "DiT-Tiny/2", "--width", "102"], ("not divisible by 4 heads",)),
    (["--model", "DiT-Tiny/2", "--batch", "0"], ("--batch 0 is below 1",)),
    (["--model", "DiT-Tiny/2", "--dtype", "int8"], ("unknown dtype",)),
    (["--model", "DiT-Tiny/2", "--device", "tpu"], ("device",)),
])
def test_other_bad_input(tmp_path, args, words):
    _bad([*args, "-o", str(tmp_path / "o")], *words)
    assert os.listdir(tmp_path) == []


def test_bad_checkpoint_options(flex_ckpt, tmp_path):
    _bad(["-c", str(flex_ckpt), "--patch-sizes", "8", "-o", str(tmp_path / "o")], "does not run at patch size 8",
         "[2, 4]")
    _bad(["-c", str(flex_ckpt), "--latent", "32", "-o", str(tmp_path / "o")], "cannot be used with --checkpoint")
    _bad(["-c", str(flex_ckpt), "--model", "DiT-Tiny/2", "-o", str(tmp_path / "o")], "both given")
    _bad(["-c", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "o")], "not found")
    assert os.listdir(tmp_path) == []
