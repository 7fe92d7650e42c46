"""EMA of the trainable weights, and the resumable training state (one atomic torch file).

The state holds the trainable parameters, the optimizer, the EMA, every RNG (the loop's generator, torch's CPU
and CUDA generators), the data order and the step. Frozen weights are not stored: they are the input
checkpoint's, whose SHA-256 the state records. Saved with torch.save and read with weights_only=True.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from flexcli.errors import FlexcliError
from flexcli.io.atomic import atomic_path

STATE_NAME = "state.pt"
STATE_VERSION = 1


class EMA:
    """Exponential moving average of the named trainable parameters (fp32 copies).

    With warm-up, update n uses decay min(decay, (1 + n) / (10 + n)): with a few hundred steps an EMA of 0.9999
    would still be mostly the initial weights.
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float, warmup: bool = True):
        self.params = params
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.shadow = {k: p.detach().float().clone() for k, p in params.items()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        for k, p in self.params.items():
            self.shadow[k].mul_(d).add_(p.detach().float(), alpha=1 - d)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self):
        """Temporarily put the EMA weights into the model (e.g. to save or evaluate them)."""
        backup = {k: p.detach().clone() for k, p in self.params.items()}
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.shadow[k].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(backup[k])

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, sd: dict) -> None:
        self.updates = int(sd["updates"])
        self.shadow = {k: sd["shadow"][k].float().to(p.device).clone() for k, p in self.params.items()}


def rng_state(generator: torch.Generator) -> dict:
    state = {"generator": generator.get_state(), "torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError, ValueError):
            torch.cuda.set_rng_state_all(state["torch_cuda"])


def save_state(path: Path, *, step: int, params: dict, optimizer, ema: EMA | None, generator: torch.Generator,
               data_order: dict, source_sha256: str, last_loss: float, extra: dict | None = None) -> Path:
    """`extra`: more entries (distill: the data's description and the NaN guard's loss history)."""
    state = {"version": STATE_VERSION, "step": step, "params": {k: p.detach().cpu().clone() for k, p in params.items()},
             "optimizer": optimizer.state_dict(), "ema": ema.state_dict() if ema is not None else None,
             "rng": rng_state(generator), "data_order": data_order, "source_sha256": source_sha256,
             "last_loss": float(last_loss), **(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_state(path: Path) -> dict:
    if not path.exists():
        raise FlexcliError(f"--resume: no training state {path.name} in {path.parent}",
                           "start the run without --resume (or pass the --out folder of an earlier run)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FlexcliError(f"--resume: {path} cannot be read ({type(e).__name__})",
                           "the state file is damaged; start again without --resume") from e
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise FlexcliError(f"--resume: {path} is not a flexcli training state", "start again without --resume")
    return state


class DataOrder:
    """Epoch-wise shuffled data order (every example once per epoch), resumable."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.gen = n, generator
        self.perm, self.pos, self.epoch = torch.randperm(n, generator=generator), 0, 0

    def take(self, k: int) -> torch.Tensor:
        out = []
        while k > 0:
            if self.pos >= self.n:
                self.perm, self.pos, self.epoch = torch.randperm(self.n, generator=self.gen), 0, self.epoch + 1
            chunk = self.perm[self.pos:self.pos + k]
            out.append(chunk)
            self.pos += len(chunk)
            k -= len(chunk)
        return torch.cat(out)

    def state_dict(self) -> dict:
        return {"perm": self.perm.clone(), "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, sd: dict) -> None:
        self.perm, self.pos, self.epoch = sd["perm"].clone(), int(sd["pos"]), int(sd["epoch"])
