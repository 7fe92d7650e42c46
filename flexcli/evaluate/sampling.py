"""The sweep's link to the sample library (flexcli.sampling): `sample_fn(schedule, cfg_scale, run_dir, steps=None)
-> run_dir`.

Every call uses the same seeds (seed, seed + 1, ...) and labels, so the combinations differ only in schedule,
step count (`steps`, default: the one given here), guidance scale and a sweep cell's own options (`**more`,
e.g. solver or cfg_scale_all_weak). Other sampling settings (solver, VAE, batch size, ...) come from `options`,
which take flexcli.sampling.SampleConfig field names (defaults < recipe < options < a cell's options).
"""
from __future__ import annotations

from pathlib import Path

from flexcli.errors import FlexcliError


def library_sample_fn(ckpt: Path, num_samples: int, seed: int = 0, steps: int = 250, recipe: Path | None = None,
                      progress=None, **options):
    from flexcli.sampling import resolve_config, run

    base = dict(checkpoint=str(ckpt), num_samples=num_samples, seed=seed, steps=steps, **options)
    resolve_config({**base, "out": "unused", "schedule": f"{steps}/{steps}"}, recipe)  # fail before any sampling

    def sample_fn(schedule: str, cfg_scale: float, run_dir: Path, steps: int | None = None, **more) -> Path:
        cfg = resolve_config({**base, **more, "out": str(run_dir), "schedule": schedule, "cfg_scale": cfg_scale,
                              **({"steps": steps} if steps is not None else {})}, recipe)
        run(cfg, progress)
        if not (Path(run_dir) / "samples.npz").is_file():
            raise FlexcliError("the sampler saved latents only (a latent-space model without a VAE)",
                               "pass --vae DIR (a local diffusers AutoencoderKL folder) so samples are images")
        return Path(run_dir)

    def warmup(run_dir: Path) -> None:
        """Two steps (one weak, one powerful) on one batch, so the first timed run pays no one-time costs."""
        batch = resolve_config({**base, "out": str(run_dir)}, recipe).batch_size
        warm = {**base, "out": str(run_dir), "steps": 2, "num_samples": min(num_samples, batch)}
        try:
            run(resolve_config({**warm, "schedule": "1/1"}, recipe))
        except FlexcliError:  # no weak patch size: warm the powerful mode only
            run(resolve_config({**warm, "schedule": "2/2"}, recipe))
    def check(more: dict) -> None:
        """Fail before any sampling when a sweep cell's options are not valid sample settings."""
        resolve_config({**base, **more, "out": "unused", "schedule": f"{steps}/{steps}"}, recipe)
    sample_fn.warmup, sample_fn.check = warmup, check
    return sample_fn
