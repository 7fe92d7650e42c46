"""`flexcli info`: what a checkpoint is and what one forward pass costs at each patch size."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from flexcli.console import result, user_errors


def info(
    checkpoint: Path = typer.Argument(..., help="Any checkpoint flexcli reads (plain or flexified)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Print the layout, config, patch sizes, parameter counts and exact cost per patch size."""
    with user_errors():
        from flexcli.api import describe
        from flexcli.flex.patches import label

        d = describe(checkpoint)
        if as_json:
            result(json.dumps(d, indent=2))
            return
        c = d["config"]
        lines = [f"checkpoint: {d['path']}", f"family: {d['family']}", f"layout: {d['layout']}",
                 "config: " + ", ".join(f"{k}={v}" for k, v in c.items())]
        guessed = {k: v for k, v in d["inferred"].items() if not v.startswith(("tensors", "metadata"))}
        if guessed:
            lines.append("inferred, not from tensors: " + ", ".join(f"{k} ({v})" for k, v in guessed.items()))
        if d["text"]:
            t = d["text"]
            budget = ", ".join(f"p={r['patch_size']}: {r['tokens']}" for r in d["cost"])
            lines.append(f"text: width {t['width']}, {t['tokens']} caption tokens, null caption: {t['null_caption']}")
            lines.append(f"token budget: image tokens {budget}; + {t['tokens']} caption tokens (cross-attention keys)")
        flex = d["flex"]
        lines.append(f"mode: {flex['mode'] if flex else 'plain ' + d['family']}")
        if flex and flex.get("lora"):
            lines.append(f"lora: rank {flex['lora']['rank']}, alpha {flex['lora']['alpha']}, on {', '.join(flex['lora']['targets'])}")
        lines.append(f"patch sizes: {', '.join(label(p) for p in d['patch_sizes'])} (pretrained {label(c['patch_size'])})")
        lines.append(f"parameters: base {d['params']['base']:,}, added {d['params']['added']:,}")
        lines.append(f"cost of one forward pass per sample on the {'x'.join(map(str, d['latent']))} latent "
                     f"({d['flops_convention']}):")
        for r in d["cost"]:
            extra = f"  (LoRA merged: {r['gmacs_merged']:.4f} GMACs)" if "gmacs_merged" in r else ""
            lines.append(f"  p={label(r['patch_size']):<5} tokens={r['tokens']:<6} {r['gmacs']:.4f} GMACs = {r['gflops']:.4f} GFLOPs{extra}")
        result("\n".join(lines))
