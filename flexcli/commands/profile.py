"""`flexcli profile`: exact FLOPs beside measured latency per sequence length (paper §4.4, Fig. 9)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flexcli.console import err, result, user_errors


def profile(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Named config with random weights, e.g. DiT-XL/2 or Wan2.1-T2V-1.3B (default: DiT-XL/2)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="Profile a checkpoint (its config and patch sizes); flex LoRAs unmerged and merged."),
    seq_lengths: Optional[str] = typer.Option(None, "--seq-lengths", help="Token counts, e.g. 1024,256,64: each must come from a patch size of the latent."),
    patch_sizes: Optional[str] = typer.Option(None, "--patch-sizes", help="Patch sizes, e.g. 1,2,4; video 1x2x2,2x2x2,1x4x4 (default: the model's, and twice it)."),
    latent: Optional[str] = typer.Option(None, "--latent", help="Latent size N or HxW; video FxHxW, e.g. 32x88x48 (default: the config's; Wan 21x60x104 = 480p, 81 frames)."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="Image size N or HxW; latent = image / 8."),
    fit_latent: bool = typer.Option(False, "--fit-latent", help="Size the latent per --seq-lengths entry (square, else the most square rectangle) at the model's patch size."),
    depth: Optional[int] = typer.Option(None, help="Override the named config's depth (e.g. 24 for the paper's T2I/T2V shape)."),
    width: Optional[int] = typer.Option(None, help="Override the hidden size (e.g. 2048)."),
    heads: Optional[int] = typer.Option(None, help="Override the head count."),
    batch: int = typer.Option(2, help="Samples per forward pass (2 = one classifier-free-guidance step)."),
    dtype: Optional[str] = typer.Option(None, metavar="<fp32|bf16|fp16>", help="fp32, bf16 or fp16 (default: bf16 on CUDA and with --analytic, fp32 on the CPU)."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile(fullgraph=True, mode='reduce-overhead'); compile time is not timed."),
    device: Optional[str] = typer.Option(None, metavar="<cpu|cuda|cuda:N>", help="cuda, cuda:N or cpu (default: cuda if present, else cpu)."),
    repeats: Optional[int] = typer.Option(None, help="Timed forward passes per row (default 20), or timed sampling runs per schedule (default 3); median and spread reported."),
    warmup: int = typer.Option(3, help="Untimed forward passes first, or short warm-up samples per schedule (at least 3 with --compile)."),
    peak_tflops: Optional[float] = typer.Option(None, help="Device peak TFLOP/s for the dtype (default: known for H100/H200 bf16/fp16)."),
    peak_bandwidth: Optional[float] = typer.Option(None, help="Device memory bandwidth in TB/s (default: known for H100/H200)."),
    analytic: bool = typer.Option(False, "--analytic", help="Only the FLOPs columns: no timing, no device needed."),
    out: Path = typer.Option(Path("profile"), "--out", "-o", help="A folder (gets profile.csv and the PNGs) or a .csv path."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    schedules: Optional[str] = typer.Option(None, "--schedules", help="Profile whole sampling runs instead: patch schedules as for flexcli sample, e.g. 250/250,130/130,70/70 (';' separates schedules that contain commas); each with both packing options."),
    steps: Optional[int] = typer.Option(None, help="With --schedules: sampling steps (default: 250)."),
    solver: Optional[str] = typer.Option(None, metavar="<ddpm|ddim|dpm++2m|iddpm|dpm-solver|sa-solver>", help="With --schedules: the solver, as for flexcli sample (default: ddpm)."),
    cfg_scale: Optional[float] = typer.Option(None, help="With --schedules: guidance scale; 1 disables guidance (default: 4.0)."),
    weak_patch: Optional[int] = typer.Option(None, help="With --schedules: the weak patch size of x/y schedules; for --model, the size the random model is flexified with in memory (LoRA mode) (default: twice the base)."),
    merge_lora: bool = typer.Option(False, "--merge-lora", help="With --schedules on a LoRA FlexiDiT: profile the LoRAs merged as well as unmerged."),
) -> None:
    """Measure latency, achieved TFLOP/s and memory beside the exact FLOPs of each row; write a CSV and plots."""
    with user_errors():
        from flexcli.diffusion.schedule import parse_schedules
        from flexcli.profiling.profile import profile as run_profile
        from flexcli.profiling.report import summary_lines
        from flexcli.profiling.spec import ProfileSpec, parse_int_list, parse_patch_list

        spec = ProfileSpec(
            model=model, checkpoint=checkpoint, seq_lengths=parse_int_list(seq_lengths, "--seq-lengths"),
            patch_sizes=parse_patch_list(patch_sizes, "--patch-sizes"), latent=latent, image_size=image_size,
            fit_latent=fit_latent, depth=depth, width=width, heads=heads, batch=batch, dtype=dtype,
            compile=compile_, device=device, repeats=repeats, warmup=warmup, peak_tflops=peak_tflops,
            peak_bandwidth=peak_bandwidth, analytic=analytic, schedules=parse_schedules(schedules), steps=steps,
            solver=solver, cfg_scale=cfg_scale, weak_patch=weak_patch, merge_lora=merge_lora)
        rows, paths = run_profile(spec, out, force=force, progress=lambda m: err.print(m, markup=False))
        for line in summary_lines(rows):
            err.print(line, markup=False)
        for path in paths:
            result(str(path))
