"""A sampling run resolved against a loaded model (paper §3.3, §3.4): the patch schedule of every step and
branch, the timesteps, labels, guidance scales and the exact cost of every step (`flexcli.compute`)."""
from __future__ import annotations

from dataclasses import dataclass, field


from flexcli import checks
from flexcli.compute import model_step_cost
from flexcli.diffusion import schedule as G
from flexcli.diffusion.process import GaussianDiffusion
from flexcli.diffusion.schedule import PatchSchedule, for_compute, from_list, parse_schedule
from flexcli.errors import FlexcliError
from flexcli.flex.resize import as_patch
from flexcli.sampling.conditions import ClassLabels, Prompts, class_labels, text_prompts
from flexcli.flex.patches import label
from flexcli.sampling.config import SampleConfig
from flexcli.sampling.video import flow_shift_of, latent_shape_of, run_timesteps, solver_of

@dataclass
class Plan:
    schedule: PatchSchedule
    timesteps: list  # increasing: DDPM timesteps (ints), or flow-matching model timesteps (floats)
    diffusion: GaussianDiffusion | None  # None for flow matching
    conditioning: ClassLabels | Prompts  # per sample, with its null conditioning
    latent_shape: tuple[int, ...]  # (C, *spatial) of one sample
    guided: bool
    s1: float
    s2: float
    step_macs: list[int]
    baseline_step_macs: int
    notes: list[str] = field(default_factory=list)
    solver: str = "ddpm"  # as resolved (the config may leave it to the family)
    flow_shift: float | None = None  # flow-matching solvers only
    input_size: tuple | None = None  # the latent's spatial shape, when it is not the family's default (video)
    s0: float | None = None  # the CFG scale of all-weak steps (None: s1)

    @property
    def labels(self) -> list[int] | None:
        return getattr(self.conditioning, "labels", None)


def _names(sizes) -> str:
    """[2, 4]; video [1x2x2, 2x2x2]."""
    return "[" + ", ".join(label(p) for p in sizes) + "]"


def _weak(cfg: SampleConfig, model):
    from flexcli.flex.patches import parse_patch, volume

    p0, sizes = model.patch_sizes[0], model.patch_sizes
    weak_sizes = sorted((p for p in sizes if p != p0), key=lambda q: (volume(q), q))
    if cfg.weak_patch is None:
        return weak_sizes[0] if weak_sizes else None
    weak = parse_patch(cfg.weak_patch, len(model.base_patch))
    if weak not in sizes:
        raise FlexcliError(f"--weak-patch {label(weak)} is not a patch size of this checkpoint (it has "
                           f"{_names(sizes)})", "flexify with that size or pick one of its sizes")
    return weak


def _schedule(cfg: SampleConfig, p0, weak, step_cost, guided: bool) -> PatchSchedule:
    if cfg.compute is not None:
        schedule = for_compute(cfg.compute, cfg.steps, step_cost, p0, weak, guided)
    elif cfg.schedule_steps is not None:
        schedule = from_list(cfg.schedule_steps, cfg.steps)
    elif cfg.schedule is not None:
        schedule = parse_schedule(cfg.schedule, cfg.steps, p0, weak)
    else:
        schedule = parse_schedule(f"{cfg.steps}/{cfg.steps}", cfg.steps, p0, weak)
    return schedule.reversed() if cfg.order == "weak-last" else schedule


def make_plan(cfg: SampleConfig, model) -> Plan:
    """Resolve the schedule, conditioning, scales and per-step costs against a loaded model."""
    p0, sizes = model.patch_sizes[0], model.patch_sizes
    weak = _weak(cfg, model)
    solver = solver_of(cfg, model)
    guided = cfg.cfg_scale != 1.0
    video = len(model.base_patch) == 3
    # --compute weighs the two sizes it mixes on the run's latent, so they must tile it first
    latent = latent_shape_of(cfg, model, [p0] + ([weak] if video and cfg.compute is not None and weak else []))
    checks.sample_plan(cfg, latent)  # before the per-sample conditioning is built
    conditioning = conditions_of(model, cfg, guided)
    input_size = latent[1:] if video else None
    step_cost = model_step_cost(model, cfg.packing, input_size=input_size)
    schedule = _schedule(cfg, p0, weak, step_cost, guided)
    used = schedule.sizes() if guided else set(schedule.cond)
    missing = sorted(used - set(sizes), key=str)
    if missing:
        raise FlexcliError(f"the schedule uses patch size {label(missing[0])} but the checkpoint has only "
                           f"{_names(sizes)}",
                           "flexify it with that size (flexcli flexify CKPT -p P) or change --schedule")
    if video:
        latent_shape_of(cfg, model, sorted(used, key=str))
    for p in used:
        if any(s % q for s, q in zip(latent[1:], as_patch(p, len(latent) - 1))):
            raise FlexcliError(f"patch size {p} does not divide the {'x'.join(map(str, latent[1:]))} latent",
                               "choose sizes that divide the latent side")
    shift = flow_shift_of(cfg, latent) if solver.startswith("flow-") else None
    timesteps = run_timesteps(solver, cfg.steps, shift)
    s2 = cfg.cfg_scale_weak if cfg.cfg_scale_weak is not None else G.linked_weak_scale(cfg.cfg_scale)
    step_macs = [step_cost(c, u if guided else None) for c, u in schedule.pairs()]
    base = step_cost(p0, p0 if guided else None)
    diffusion = None if shift is not None else GaussianDiffusion.from_timesteps(timesteps)
    return Plan(schedule, timesteps, diffusion, conditioning, latent, guided, cfg.cfg_scale, s2, step_macs, base,
                solver=solver, flow_shift=shift, input_size=input_size, s0=cfg.cfg_scale_all_weak)


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
