"""One optimisation step of `flexcli distill`, and the state it runs on (model, optimizer, EMA, generator).

Determinism: every random draw of a step (patch size, data order, label or caption dropout, timesteps, noise, the MMD
chain) comes from one CPU `torch.Generator`, drawn for the *global* batch on every process; each process then
takes its slice. One process and N processes therefore see the same samples, and a resumed run continues the
same loss sequence as an uninterrupted one.

Multi-process: the model is wrapped in DistributedDataParallel over its trainable parameters only, with
find_unused_parameters=True (a step trains one weak size, so the other sizes' LoRAs, tokenizers and norms
get no gradient). Steps with the bootstrapped MMD loss run several forwards per backward, which DDP's reducer
does not allow: they backpropagate under no_sync() and all-reduce the gradients explicitly.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch

from flexcli.data.text_data import TextData
from flexcli.diffusion.process import GaussianDiffusion
from flexcli.families import family_of
from flexcli.flex.conditions import TextCondition
from flexcli.train import flow
from flexcli.train import objectives as obj
from flexcli.train.config import DistillConfig
from flexcli.train.state import EMA, DataOrder


def rows(y, sl):
    """Rows `sl` of a batch's conditioning: class labels, or a TextCondition's embeddings and mask."""
    return TextCondition(y.embeds[sl], y.mask[sl]) if isinstance(y, TextCondition) else y[sl]


@dataclass
class StepInfo:
    step: int  # steps done
    steps: int  # total steps of the run
    loss: float
    patch_size: object  # an int (images) or a (p_t, p_h, p_w) tuple (video)
    lr: float
    grad_norm: float
    seconds: float = 0.0


class Trainer:
    """The trainable state of a run and its optimisation step (§3.2 distillation, or §3.1 fine-tuning)."""

    def __init__(self, model, cfg: DistillConfig, dist, data, mode: str, sizes: list):
        self.model, self.cfg, self.dist, self.data, self.mode, self.sizes = model, cfg, dist, data, mode, sizes
        device = dist.device
        model.to(device).eval()  # eval: LabelEmbedder must not drop labels again (we drop them, pitfall 9)
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=cfg.lr, betas=tuple(cfg.betas),
                                           weight_decay=cfg.weight_decay)
        self.ema = EMA(self.params, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.order = DataOrder(len(data), self.gen)
        self.flow = family_of(model).process == "flow"  # velocity models (Wan) train with flexcli.train.flow

    def wrap(self) -> None:
        """Build what the steps need once the state is final (after a resume): DDP, autocast, processes."""
        cfg, dist, device = self.cfg, self.dist, self.dist.device
        self.diffusion = GaussianDiffusion()
        self.chain = GaussianDiffusion.respaced(cfg.mmd_respacing) if cfg.mmd_weight > 0 else None
        self.net = self.model
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.net = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None,
                           find_unused_parameters=True, broadcast_buffers=False)
        if device.type == "cuda" and cfg.precision != "fp32":
            self.autocast = torch.autocast("cuda", dtype=torch.bfloat16)
        elif cfg.precision == "bf16":
            self.autocast = torch.autocast(device.type, dtype=torch.bfloat16)
        else:
            self.autocast = contextlib.nullcontext()  # fp32 on the CPU by default: exact and reproducible
        default = getattr(self.model.config, "class_dropout_prob", 0.1)  # Wan: 10 % of captions to the null one
        self.label_p = default if cfg.label_dropout is None else cfg.label_dropout

    def step(self, step: int, on_failure) -> StepInfo:
        """Optimisation step step + 1. `on_failure(what, value)` builds the error for a non-finite loss/gradient."""
        cfg, dist, gen = self.cfg, self.dist, self.gen
        t0 = time.perf_counter()
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # One draw for the global batch, identical on every process.
        p = self.sizes[int(torch.randint(len(self.sizes), (), generator=gen))]
        idx = self.order.take(cfg.batch_size)
        if isinstance(self.data, TextData):  # caption dropout: the learned or the encoded empty null caption
            y_all = self.data.dropped(idx, self.label_p, gen, self.model.learned_null_caption())
        else:
            y_all = obj.drop_labels(self.data.labels[idx], self.label_p, self.model.config.num_classes, gen)
        if self.flow:  # sigma in (0, 1], as the flow sampler spaces it
            t_all = flow.sample_sigmas(cfg.batch_size, gen, cfg.timesteps, cfg.t_bias_power, cfg.flow_shift)
        else:
            t_all = obj.sample_timesteps(cfg.batch_size, gen, cfg.timesteps, cfg.t_bias_power)
        noise_all = torch.randn((cfg.batch_size, *self.data.latents.shape[1:]), generator=gen)
        manual_sync = cfg.mmd_weight > 0 and dist.world > 1
        total = torch.zeros((), dtype=torch.float64, device=dist.device)
        for a in range(cfg.grad_accum):
            total += self._micro_batch(a, p, idx, y_all, t_all, noise_all, manual_sync)
        if manual_sync:
            for prm in self.params.values():
                if prm.grad is None:
                    prm.grad = torch.zeros_like(prm)
                dist.all_sum(prm.grad).div_(dist.world)
        step_loss = float(dist.all_sum(total).item()) / dist.world  # each process holds world x its share
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), cfg.grad_clip or float("inf"))
        if not math.isfinite(step_loss) or not torch.isfinite(grad_norm):
            what = "loss" if not math.isfinite(step_loss) else "gradient norm"
            raise on_failure(what, step_loss if what == "loss" else float(grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        return StepInfo(step + 1, cfg.steps, step_loss, p, lr, float(grad_norm), time.perf_counter() - t0)

    def _micro_batch(self, a: int, p, idx, y_all, t_all, noise_all, manual_sync: bool) -> torch.Tensor:
        """Forward and backward of micro-batch `a` (this process's slice); returns its loss share."""
        cfg, dist, device, model, net = self.cfg, self.dist, self.dist.device, self.model, self.net
        B, micro = cfg.batch_size, cfg.batch_size // cfg.grad_accum
        local = micro // dist.world
        lo = a * micro + dist.rank * local
        sl = slice(lo, lo + local)
        x0, y = self.data.latents[idx[sl]].to(device), rows(y_all, sl).to(device)
        t, noise = t_all[sl].to(device), noise_all[sl].to(device)
        if self.flow:  # the model sees 1000 sigma
            x_t, t = flow.noised(x0, t, noise), 1000 * t
        else:
            x_t = self.diffusion.q_sample(x0, t, noise)
        c, base = model.config.in_channels, model.config.patch_size
        last = a == cfg.grad_accum - 1
        sync = contextlib.nullcontext() if (last and not manual_sync) or net is model else net.no_sync()
        with sync:
            with self.autocast:
                if self.mode == "lora":
                    terms = obj.lora_distill_loss(net, model, x_t, t, y, p, c, cfg.sigma_weight)
                elif self.flow:
                    terms = flow.flow_shared_loss(net, model, x0, x_t, t, noise, y, p, base, cfg.distill_weight,
                                                  cfg.sigma_weight)
                else:
                    terms = obj.shared_loss(net, model, self.diffusion, x0, x_t, t, noise, y, p, base,
                                            model.config.learn_sigma, cfg.distill_weight, cfg.sigma_weight)
                loss = terms["loss"].float().sum() / (B / dist.world)
                if cfg.mmd_weight > 0:
                    weak = p if p != base else max(self.sizes)
                    tgt = torch.randint(len(self.data), (local,), generator=self.gen)
                    mmd = obj.bootstrap_mmd_loss(net, x0, y, self.data.latents[tgt].to(device), weak, base,
                                                 self.chain, cfg.mmd_weak_steps, cfg.mmd_powerful_steps, self.gen,
                                                 model.config.learn_sigma, cfg.t_bias_power)
                    loss = loss + cfg.mmd_weight * mmd / cfg.grad_accum
            loss.backward()
        return loss.detach().double()
