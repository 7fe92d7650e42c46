"""diffusers interop (issue #12): a flexified PixArt as the `transformer` of diffusers' `PixArtAlphaPipeline` or
`PixArtSigmaPipeline`, running a patch schedule, weak steps first.

    from flexcli.interop import FlexTransformer
    pipe.transformer = FlexTransformer.from_checkpoint("pixart-flex.safetensors", schedule="12/12", steps=20)
    image = pipe("a small red boat", num_inference_steps=20).images[0]

`FlexTransformer` has the forward signature the pipelines call (`hidden_states, encoder_hidden_states, timestep,
added_cond_kwargs, encoder_attention_mask, return_dict`) and the `config`/`dtype` they read. Each call is one
denoising step: the k-th call of a sampling run uses step k of the schedule (a call whose timestep is not below
the previous one starts a new run; `reset()` starts one by hand). With classifier-free guidance the pipeline
batches [negative; prompt]: the first half runs at the step's guidance patch size, the second at its
conditional one (one forward pass when they agree). The pipeline's own guidance combines them, so this is
plain CFG with the null caption at p_uncond, i.e. `flexcli sample --guidance cfg`; the paper's weak guidance
(the guidance branch conditioned on the prompt, with its own scale) needs `flexcli sample`.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from flexcli.diffusion.schedule import PatchSchedule, parse_schedule
from flexcli.flex.conditions import TextCondition
from flexcli.models.pixart import PixArtCondition


def as_schedule(schedule, steps: int | None, model) -> PatchSchedule:
    """A PatchSchedule from a PatchSchedule, a `flexcli sample --schedule` spec (needs `steps`; weak size: the
    smallest weak one) or a list of patch sizes (both branches)."""
    if isinstance(schedule, PatchSchedule):
        return schedule
    if isinstance(schedule, (list, tuple)):
        return PatchSchedule(tuple(schedule), tuple(schedule), "list")
    if steps is None:
        raise ValueError("a schedule spec needs the number of steps (the pipeline's num_inference_steps)")
    p0 = model.patch_sizes[0]
    weak = sorted(p for p in model.patch_sizes if p != p0)
    return parse_schedule(str(schedule), steps, p0, weak[0] if weak else None)


class FlexTransformer(nn.Module):
    """A flexcli PixArt (`flexcli.models.pixart.PixArt`) that a diffusers PixArt pipeline calls as its transformer."""

    def __init__(self, model, schedule, steps: int | None = None, guided: bool = True):
        super().__init__()
        from diffusers.configuration_utils import FrozenDict

        cfg = model.config
        self.model, self.guided = model, guided
        self.schedule = as_schedule(schedule, steps, model)
        used = set(self.schedule.cond) | (set(self.schedule.uncond) if guided else set())
        if used - set(model.patch_sizes):
            raise ValueError(f"the schedule uses patch sizes {sorted(used)}; the model has {model.patch_sizes}")
        self.config = FrozenDict(sample_size=cfg.sample_size, in_channels=cfg.in_channels,
                                 out_channels=cfg.out_channels, patch_size=cfg.patch_size)
        self.step, self._last_t = 0, None

    @classmethod
    def from_checkpoint(cls, path: str | Path, schedule, steps: int | None = None, guided: bool = True,
                        merge_lora: bool = False) -> "FlexTransformer":
        from flexcli.api import load_model

        return cls(load_model(path, merge_lora=merge_lora), schedule, steps, guided)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def reset(self) -> None:
        self.step, self._last_t = 0, None

    def sizes(self, step: int) -> tuple[int, int]:
        """(p_cond, p_uncond) of a step; steps past the schedule's end keep its last sizes."""
        k = min(step, self.schedule.steps - 1)
        return self.schedule.cond[k], self.schedule.uncond[k]

    def _condition(self, embeds, mask, added, rows: slice):
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        res, ar = (added or {}).get("resolution"), (added or {}).get("aspect_ratio")
        if res is not None and ar is not None:
            return PixArtCondition(embeds[rows], mask[rows], res[rows], ar[rows])
        return TextCondition(embeds[rows], mask[rows])

    @torch.no_grad()
    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                timestep: torch.Tensor | None = None, added_cond_kwargs: dict | None = None,
                cross_attention_kwargs: dict | None = None, attention_mask: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None, return_dict: bool = True):
        n = hidden_states.shape[0]
        t = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1).expand(n)
        if self._last_t is not None and float(t[0]) >= self._last_t:
            self.step = 0  # a new sampling run
        pc, pu = self.sizes(self.step)
        args = (encoder_hidden_states, encoder_attention_mask, added_cond_kwargs)
        if not self.guided or pc == pu:
            out = self.model(hidden_states, t, self._condition(*args, slice(None)), patch_size=pc)
        else:
            if n % 2:
                raise ValueError(f"a guided batch has an even size ([negative; prompt]), got {n}")
            h = n // 2
            uncond = self.model(hidden_states[:h], t[:h], self._condition(*args, slice(0, h)), patch_size=pu)
            cond = self.model(hidden_states[h:], t[h:], self._condition(*args, slice(h, n)), patch_size=pc)
            out = torch.cat([uncond, cond])
        self.step, self._last_t = self.step + 1, float(t[0])
        if not return_dict:
            return (out,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=out)
