"""`flexcli distill`: teach a flexified checkpoint's weak patch sizes (LoRA mode) or fine-tune it (shared mode)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from flexcli.console import err, progress_bar, result, user_errors


def _progress():
    """A progress bar (loss, it/s, ETA) on stderr, driven by the training loop's callback (plain lines in a log)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    from rich.text import Text

    class Speed(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.2f} it/s" if task.speed else "-- it/s")

    bar = progress_bar(TextColumn("distill"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                       TextColumn("p={task.fields[patch]}"), Speed(), TimeElapsedColumn(), TextColumn("ETA"),
                       TimeRemainingColumn())
    state = {}

    def callback(event: str, data) -> None:
        if event == "start":
            start, total = data
            bar.start()
            state["task"] = bar.add_task("distill", total=total, completed=start, loss="--", patch="-")
        elif event == "step":
            bar.update(state["task"], completed=data.step, loss=f"{data.loss:.4g}", patch=data.patch_size)
        elif event == "checkpoint":
            bar.console.print(f"checkpoint: {data}")

    return bar, callback


def _patch(text: str):
    """"4" -> 4, "2,2,2" -> [2, 2, 2] (as a recipe writes them); anything else is checked by the library."""
    parts = text.replace("x", ",").split(",")
    if all(p.strip().isdigit() for p in parts):
        return int(parts[0]) if len(parts) == 1 else [int(p) for p in parts]
    return text


def distill(
    checkpoint: Path = typer.Argument(..., help="A flexified checkpoint (flexcli flexify)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default: <stem>-distill beside the input)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="Recipe YAML, e.g. recipes/distill/tiny_cpu.yaml."),
    data: Optional[str] = typer.Option(None, help="fashion-mnist[:split], a latent shard (.safetensors/.npz) or a folder (text-to-image: images + metadata.jsonl, or shards with prompt_embeds; video: shards with latents (N, C, F, H, W) + prompt_embeds)."),
    vae: Optional[str] = typer.Option(None, help="Local diffusers AutoencoderKL folder, to encode an image folder."),
    text_encoder: Optional[str] = typer.Option(None, help="Text-to-image: a local T5 (or pipeline) folder, or minilm, to encode the captions."),
    eval_data: Optional[str] = typer.Option(None, help="Held-out data: weak-vs-powerful error before and after."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps in total."),
    batch_size: Optional[int] = typer.Option(None, help="Global batch size (all processes, all accumulation steps)."),
    grad_accum: Optional[int] = typer.Option(None, help="Gradient accumulation steps."),
    lr: Optional[float] = typer.Option(None, help="AdamW learning rate."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay."),
    grad_clip: Optional[float] = typer.Option(None, help="Clip the gradient norm to this value."),
    ema_decay: Optional[float] = typer.Option(None, help="EMA decay (0 = off); warmed up by default."),
    patch_size: Optional[list[str]] = typer.Option(None, "--patch-size", "-p", help="Patch size to train (repeatable): 4; video 2,2,2."),
    timesteps: Optional[str] = typer.Option(None, metavar="<uniform|low>", help="Timestep sampling: uniform or low (biased to small t)."),
    sigma_weight: Optional[float] = typer.Option(None, help="LoRA mode: weight of the variance channels."),
    distill_weight: Optional[float] = typer.Option(None, help="Shared mode: weight of the distillation term."),
    mmd_weight: Optional[float] = typer.Option(None, help="Shared mode: weight of the bootstrapped MMD loss (App. B.1)."),
    data_limit: Optional[int] = typer.Option(None, help="Use only the first N training examples."),
    ckpt_every: Optional[int] = typer.Option(None, help="Write the training state every N steps."),
    precision: Optional[str] = typer.Option(None, metavar="<auto|fp32|bf16>", help="auto (bf16 autocast on CUDA), fp32 or bf16."),
    seed: Optional[int] = typer.Option(None, help="Seed of every random draw."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Start over in an existing --out folder."),
    stop_after: Optional[int] = typer.Option(None, help="Stop (with a checkpoint) after this step; --resume continues."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Distil the weak patch sizes from the powerful one (LoRA mode, §3.2) or fine-tune the whole model (shared, §3.1).

    Writes OUT/distilled.safetensors (stdout), the resolved config.yaml, loss.csv, loss.png and state.pt.
    Multi-GPU: torchrun --nproc_per_node N -m flexcli.cli distill ...
    """
    overrides = dict(data=data, vae=vae, text_encoder=text_encoder, eval_data=eval_data, steps=steps, batch_size=batch_size,
                     grad_accum=grad_accum, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip,
                     ema_decay=ema_decay, patch_sizes=[_patch(p) for p in patch_size] if patch_size else None,
                     timesteps=timesteps,
                     sigma_weight=sigma_weight, distill_weight=distill_weight, mmd_weight=mmd_weight,
                     data_limit=data_limit, ckpt_every=ckpt_every, precision=precision, seed=seed)
    with user_errors():
        from flexcli.train import distill as run_distill

        bar, callback = _progress() if progress else (None, None)
        try:
            res = run_distill(checkpoint, out, recipe=recipe, overrides=overrides, resume=resume, force=force,
                              stop_after=stop_after, callback=callback)
        finally:
            if bar is not None:
                bar.stop()  # started by the first callback, so errors before training print one line only
        if os.environ.get("RANK", "0") != "0":
            return  # under torchrun only the first process reports
        for p, e in ((res.evaluation or {}).get("after") or {}).items():
            before = res.evaluation.get("before", {}).get(p, {}).get("eps")
            err.print(f"held-out weak-vs-powerful eps error at p={p}: {before:.5g} -> {e['eps']:.5g}"
                      if before is not None else f"held-out eps error at p={p}: {e['eps']:.5g}")
        err.print(f"step {res.step}, final loss {res.final_loss:.5g}; loss curve {res.loss_csv}")
        result(str(res.checkpoint))
