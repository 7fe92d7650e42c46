"""`flexcli sample`: generate samples with a patch schedule (weak first), weak guidance and packing."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from flexcli.console import err, progress_bar, result, user_errors


def _labels(text: Optional[str]) -> Optional[list[int]]:
    from flexcli.errors import FlexcliError

    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise FlexcliError(f"--class-labels '{text}' is not a comma-separated list of integers",
                           "pass e.g. --class-labels 207,360,387") from None


def sample(
    checkpoint: Path = typer.Argument(..., help="A DiT, Wan or flexified checkpoint."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created atomically)."),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", "-n", help="Number of samples (default: 8)."),
    steps: Optional[int] = typer.Option(None, help="Sampling steps (default: 250; iddpm 100, dpm-solver 20, sa-solver 25)."),
    solver: Optional[str] = typer.Option(None, metavar="<ddpm|ddim|dpm++2m|iddpm|dpm-solver|sa-solver|flow-unipc|flow-euler>", help="ddpm (DiT's learned sigma), ddim, dpm++2m, or PixArt's iddpm, dpm-solver, sa-solver; flow-unipc or flow-euler for flow-matching models (Wan) (default: ddpm; Wan flow-unipc)."),
    flow_shift: Optional[float] = typer.Option(None, help="Flow-matching time shift (default: 3.0 at 480p, 5.0 above, as diffusers' Wan)."),
    eta: Optional[float] = typer.Option(None, help="DDIM eta (default: 0)."),
    cfg_scale: Optional[float] = typer.Option(None, help="Guidance scale s_cfg1; 1 disables guidance (default: 4.0)."),
    cfg_scale_weak: Optional[float] = typer.Option(None, help="Weak-guidance scale s_cfg2 (default: from (1 - s1) / (1 - s2) = 2.5)."),
    cfg_scale_all_weak: Optional[float] = typer.Option(None, help="Guidance scale s_cfg0 of the steps where both branches run a weak patch size (default: s_cfg1)."),
    guidance: Optional[str] = typer.Option(None, metavar="<weak|cfg>", help="weak (paper §3.4) or cfg (null label at p_uncond) (default: weak)."),
    guided_channels: Optional[int] = typer.Option(None, help="Guide only the first N eps channels (3: DiT's FIDs) (default: all)."),
    class_labels: Optional[str] = typer.Option(None, help="Comma-separated labels, cycled (default: drawn from --seed)."),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", help="A prompt for a text-to-image/video checkpoint (repeatable; cycled over samples)."),
    prompts_file: Optional[Path] = typer.Option(None, help="A text file with one prompt per line (instead of --prompt)."),
    text_encoder: Optional[str] = typer.Option(None, help="A local text encoder folder (T5/umT5), or 'minilm' (the packaged all-MiniLM-L6-v2)."),
    pipeline: Optional[Path] = typer.Option(None, help="A local diffusers pipeline folder: its text_encoder/ and tokenizer/ are used."),
    prompt_embeds: Optional[Path] = typer.Option(None, help="Precomputed prompt embeddings (safetensors) instead of a text encoder."),
    negative_prompt: Optional[str] = typer.Option(None, help="The null caption for checkpoints without a learned one (default: \"\")."),
    seed: Optional[int] = typer.Option(None, help="Base seed: sample i uses seed+i (default: 0)."),
    schedule: Optional[str] = typer.Option(None, help="x/y (powerful for the last x cond / y guidance steps), or segments P:N,P:N (A/B: one list per branch)."),
    compute: Optional[float] = typer.Option(None, help="Target compute fraction: picks the x/x schedule that meets it."),
    weak_patch: Optional[str] = typer.Option(None, help="Weak patch size for x/y and --compute, e.g. 4; video 2,2,2 (default: smallest weak size)."),
    order: Optional[str] = typer.Option(None, metavar="<weak-first|weak-last>", help="weak-first (paper) or weak-last (ablation) (default: weak-first)."),
    packing: Optional[str] = typer.Option(None, metavar="<separate|packed>", help="separate or packed (block-diagonal mask) for mixed steps (default: separate)."),
    batch_size: Optional[int] = typer.Option(None, help="Samples per forward batch per process (default: 16)."),
    frames: Optional[int] = typer.Option(None, help="Video: frames, 4k+1; the latent has (frames-1)/4+1 (default: 81)."),
    height: Optional[int] = typer.Option(None, help="Video: height in pixels, a multiple of 8 x every spatial patch used (default: 480)."),
    width: Optional[int] = typer.Option(None, help="Video: width in pixels (default: 832)."),
    vae: Optional[Path] = typer.Option(None, help="Local diffusers AutoencoderKL folder (video: AutoencoderKLWan); without it latents are saved."),
    merge_lora: Optional[bool] = typer.Option(None, "--merge-lora/--no-merge-lora", help="Merge LoRAs per size (default: no)."),
    device: Optional[str] = typer.Option(None, metavar="<auto|cpu|cuda|cuda:N>", help="auto, cpu, cuda, cuda:1 (default: auto)."),
    dtype: Optional[str] = typer.Option(None, metavar="<float32|float64|bfloat16|float16>", help="float32, float64, bfloat16 or float16 (autocast) (default: float32)."),
    recipe: Optional[Path] = typer.Option(None, help="YAML recipe: defaults < recipe < flags."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
    allow_nonfinite: bool = typer.Option(False, "--allow-nonfinite", help="Use a checkpoint with NaN/inf weights (an error by default)."),
) -> None:
    """Sample with a FlexiDiT (images or video): weak patch sizes for the first steps, weak guidance, optional packing."""
    with user_errors():
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        from flexcli.sampling import resolve_config, run

        cli = dict(checkpoint=str(checkpoint), out=str(out), num_samples=num_samples, steps=steps, solver=solver,
                   flow_shift=flow_shift, frames=frames, height=height, width=width,
                   eta=eta, cfg_scale=cfg_scale, cfg_scale_weak=cfg_scale_weak,
                   cfg_scale_all_weak=cfg_scale_all_weak, guidance=guidance,
                   guided_channels=guided_channels, class_labels=_labels(class_labels), seed=seed,
                   prompts=prompt or None, prompts_file=str(prompts_file) if prompts_file else None,
                   text_encoder=text_encoder, pipeline=str(pipeline) if pipeline else None,
                   prompt_embeds=str(prompt_embeds) if prompt_embeds else None, negative_prompt=negative_prompt,
                   schedule=schedule, compute=compute, weak_patch=weak_patch, order=order, packing=packing,
                   batch_size=batch_size, vae=str(vae) if vae else None, merge_lora=merge_lora, device=device, dtype=dtype,
                   force=force, allow_nonfinite=allow_nonfinite or None)
        cfg = resolve_config(cli, recipe)
        total_steps = cfg.num_samples * cfg.steps
        with progress_bar(TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                          TimeElapsedColumn(), transient=True, disable=os.environ.get("RANK", "0") != "0") as bar:
            task = bar.add_task("sampling (steps x samples)", total=total_steps, info="")
            done = {"steps": 0}

            def progress(info: dict) -> None:
                done["steps"] += info["batch"]
                bar.update(task, completed=min(done["steps"], total_steps),
                           info=f"samples {info['samples_done']}/{cfg.num_samples} step {info['step']}/{info['steps']} "
                                f"compute {info['compute_fraction']:.3f}")

            path = run(cfg, progress, notes=lambda s: err.print(s))
        if path is not None:
            result(str(path))
