"""`flexcli profile` on video (issue #14): 3-D latents and patch sizes, the paper's T2V token counts, Wan-1.3B at
480p and 81 frames, the roofline drawn from a CSV with 3-D patch labels, and bad input."""
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from flexcli.cli import app
from flexcli.compute import forward_cost
from flexcli.models.wan_config import NAMED_CONFIGS
from flexcli.profiling.plots import plot_roofline

runner = CliRunner()


def _profile(tmp_path, *args):
    tmp_path.mkdir(exist_ok=True)
    res = runner.invoke(app, ["profile", *args, "--analytic", "-o", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    return pd.read_csv(tmp_path / "p" / "profile.csv")


def _closed_form(cfg, T: int, cells: int) -> int:
    """Wan's MACs per sample, written out: blocks (self q/k/v/o, attention, cross q/o, cross k/v over L text
    tokens, cross attention, FFN), embedders, patch embedding and the head."""
    D, F, L, n = cfg.hidden_size, cfg.ffn_dim, cfg.text_len, cfg.num_layers
    blocks = n * (4 * T * D * D + 2 * T * T * D + 2 * T * D * D + 2 * L * D * D + 2 * T * L * D + 2 * T * D * F)
    embed = cfg.freq_dim * D + D * D + 6 * D * D + L * (cfg.text_dim * D + D * D)
    return blocks + embed + T * cells * D * (cfg.in_channels + cfg.out_channels)


def test_the_papers_t2v_token_counts(tmp_path):
    df = _profile(tmp_path, "--model", "Wan2.1-T2V-1.3B", "--latent", "32x88x48", "--seq-lengths",
                  "33792,16896,8448")
    assert df["patch_size"].tolist() == ["1x2x2", "2x2x2", "1x4x4"] and df["tokens"].tolist() == [33792, 16896, 8448]
    cfg = NAMED_CONFIGS["Wan2.1-T2V-1.3B"]
    for _, r in df.iterrows():
        p = tuple(int(v) for v in r["patch_size"].split("x"))
        assert r["macs"] == _closed_form(cfg, r["tokens"], 4 if p == (1, 2, 2) else 8 if p == (2, 2, 2) else 16)
        assert r["macs"] == forward_cost(cfg, p, input_size=(32, 88, 48)).macs and r["flops"] == 2 * r["macs"]
    assert [round(g) for g in df["gflops"]] == [298340, 96635, 35246]
    same = _profile(tmp_path / "b", "--model", "Wan2.1-T2V-1.3B", "--latent", "32x88x48", "--patch-sizes",
                    "1x2x2,2x2x2,1x4x4")
    assert same["macs"].tolist() == df["macs"].tolist()


def test_wan_480p_81_frames_by_default(tmp_path):
    df = _profile(tmp_path, "--model", "Wan2.1-T2V-1.3B")
    assert df["latent"].tolist() == ["21x60x104"] * 2 and df["tokens"].tolist() == [32760, 8190]
    assert df[["depth", "width", "heads"]].iloc[0].tolist() == [30, 1536, 12]
    assert [round(g) for g in df["gflops"]] == [283002, 33785]


def test_papers_fig9_shape(tmp_path):
    df = _profile(tmp_path, "--model", "Wan2.1-T2V-1.3B", "--latent", "32x88x48", "--seq-lengths", "33792,8448",
                  "--depth", "24", "--width", "2048")
    assert df[["depth", "width", "heads"]].iloc[0].tolist() == [24, 2048, 16]
    assert df["patch_size"].tolist() == ["1x2x2", "1x4x4"]


@pytest.mark.parametrize("args,message", [
    (["--patch-sizes", "2x2x2"], "does not tile the 21x60x104 latent; use --latent 20x60x104 or 22x60x104"),
    (["--latent", "32x88"], "is not a video latent FxHxW"),
    (["--seq-lengths", "1000"], "sequence length 1000 is not given by any patch size"),
    (["--patch-sizes", "4"], "is a 2-D patch size, but a video model's patches have 3 axes"),
    (["--image-size", "256"], "--image-size is for image models"),
    (["--schedules", "10/10"], "--schedules profiles image models"),
])
def test_bad_video_profile_input(tmp_path, args, message):
    res = runner.invoke(app, ["profile", "--model", "Wan2.1-T2V-1.3B", *args, "--analytic", "-o",
                              str(tmp_path / "p")])
    assert res.exit_code == 2 and message in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "p").exists()


def test_roofline_from_a_csv_with_video_rows(tmp_path):
    df = _profile(tmp_path, "--model", "Wan2.1-T2V-1.3B", "--latent", "32x88x48", "--seq-lengths",
                  "33792,16896,8448")
    # what a timed GPU run adds (GPU timing is out of scope here): latency and the device's peaks
    df["latency_ms"] = [1000.0, 300.0, 120.0]
    df["achieved_tflops"] = df["batch_flops"] / (df["latency_ms"] / 1e3) / 1e12
    df["peak_tflops"], df["peak_bandwidth_tbps"], df["device_name"] = 989.0, 4.8, "NVIDIA H200"
    df.to_csv(tmp_path / "timed.csv", index=False)
    png = plot_roofline(tmp_path / "timed.csv", tmp_path / "roofline.png")
    assert png.stat().st_size > 10_000


def test_random_video_rows_count_what_they_run():
    """A row's random model, run on the CPU, performs exactly the row's FLOPs (Wan-Tiny)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    from flexcli.profiling.video import VideoShape, random_wan

    cfg = NAMED_CONFIGS["Wan-Tiny"]
    for p in ((1, 2, 2), (2, 2, 2), (1, 4, 4)):
        shape = VideoShape(p, 2, 8, 8)
        model = random_wan(cfg, shape, torch.device("cpu"), 0)
        x, t, cond = shape.example_inputs(cfg, 2, torch.Generator().manual_seed(0), "cpu", torch.float32)
        mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                   lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v)}
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            model(x, t, cond)
        assert counter.get_total_flops() == forward_cost(cfg, p, 2, input_size=shape.spatial).flops
