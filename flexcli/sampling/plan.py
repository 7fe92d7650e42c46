"""A sampling run resolved against a loaded model (paper §3.3, §3.4): the patch schedule of every step and
branch, the timesteps, labels, guidance scales and the exact cost of every step (`flexcli.compute`)."""
from __future__ import annotations

from dataclasses import dataclass, field


from flexcli.compute import model_step_cost
from flexcli.diffusion import schedule as G
from flexcli.diffusion.process import GaussianDiffusion
from flexcli.diffusion.samplers import solver_timesteps
from flexcli.diffusion.t2i_solvers import T2I_SOLVERS, t2i_timesteps
from flexcli.diffusion.schedule import PatchSchedule, for_compute, from_list, parse_schedule
from flexcli.errors import FlexcliError
from flexcli.flex.resize import as_patch
from flexcli.sampling.conditions import ClassLabels, Prompts, class_labels, text_prompts
from flexcli.sampling.config import SampleConfig

@dataclass
class Plan:
    schedule: PatchSchedule
    timesteps: list[int]
    diffusion: GaussianDiffusion
    conditioning: ClassLabels | Prompts  # per sample, with its null conditioning
    latent_shape: tuple[int, ...]  # (C, *spatial) of one sample
    guided: bool
    s1: float
    s2: float
    step_macs: list[int]
    baseline_step_macs: int
    notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[int] | None:
        return getattr(self.conditioning, "labels", None)


def make_plan(cfg: SampleConfig, model) -> Plan:
    """Resolve the schedule, conditioning, scales and per-step costs against a loaded model."""
    p0, sizes = model.patch_sizes[0], model.patch_sizes
    weak_sizes = sorted(p for p in sizes if p != p0)
    weak = cfg.weak_patch if cfg.weak_patch is not None else (weak_sizes[0] if weak_sizes else None)
    if weak is not None and weak not in sizes:
        raise FlexcliError(f"--weak-patch {weak} is not a patch size of this checkpoint (it has {sizes})",
                           "flexify with that size or pick one of its sizes")
    guided = cfg.cfg_scale != 1.0
    conditioning = conditions_of(model, cfg, guided)
    step_cost = model_step_cost(model, cfg.packing)
    if cfg.compute is not None:
        schedule = for_compute(cfg.compute, cfg.steps, step_cost, p0, weak, guided)
    elif cfg.schedule_steps is not None:
        schedule = from_list(cfg.schedule_steps, cfg.steps)
    elif cfg.schedule is not None:
        schedule = parse_schedule(cfg.schedule, cfg.steps, p0, weak)
    else:
        schedule = parse_schedule(f"{cfg.steps}/{cfg.steps}", cfg.steps, p0, weak)
    if cfg.order == "weak-last":
        schedule = schedule.reversed()
    used = schedule.sizes() if guided else set(schedule.cond)
    missing = sorted(used - set(sizes))
    if missing:
        raise FlexcliError(f"the schedule uses patch size {missing[0]} but the checkpoint has only {sizes}",
                           "flexify it with that size (flexcli flexify CKPT -p P) or change --schedule")
    latent = model.latent_shape
    for p in used:
        if any(s % q for s, q in zip(latent[1:], as_patch(p, len(latent) - 1))):
            raise FlexcliError(f"patch size {p} does not divide the {'x'.join(map(str, latent[1:]))} latent",
                               "choose sizes that divide the latent side")
    if cfg.solver in T2I_SOLVERS:  # PixArt's protocol (App. B.5); the model sees these, noisiest first
        timesteps = sorted(t2i_timesteps(cfg.solver, cfg.steps))
    else:
        timesteps = solver_timesteps(cfg.solver, cfg.steps)
    s2 = cfg.cfg_scale_weak if cfg.cfg_scale_weak is not None else G.linked_weak_scale(cfg.cfg_scale)
    step_macs = [step_cost(c, u if guided else None) for c, u in schedule.pairs()]
    base = step_cost(p0, p0 if guided else None)
    return Plan(schedule, timesteps, GaussianDiffusion.from_timesteps(timesteps), conditioning, latent, guided,
                cfg.cfg_scale, s2, step_macs, base)


def conditions_of(model, cfg: SampleConfig, guided: bool) -> ClassLabels | Prompts:
    """Class labels for class-conditional families, prompts for text-conditional ones."""
    from flexcli.families import family_of

    if family_of(model).conditioning == "text":
        return text_prompts(model, cfg, guided)
    given = [n for n, v in (("--prompt", cfg.prompts), ("--prompts-file", cfg.prompts_file),
                            ("--prompt-embeds", cfg.prompt_embeds), ("--text-encoder", cfg.text_encoder)) if v]
    if given:
        raise FlexcliError(f"{given[0]} given to a class-conditional checkpoint", "pass --class-labels instead")
    return class_labels(model, cfg.num_samples, cfg.class_labels, cfg.seed, guided)
