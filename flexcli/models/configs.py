"""DiT configurations: the DiT paper's named configs, tiny ones for tests, and the config dataclass."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class DiTConfig:
    """Hyper-parameters of a class-conditional DiT (names follow facebookresearch/DiT `DiT.__init__`)."""

    input_size: int = 32  # latent side length (image_size // 8 for the SD-VAE)
    patch_size: int = 2  # the pretrained ("powerful") patch size
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    def tokens(self, patch_size: int | None = None) -> int:
        p = patch_size or self.patch_size
        return (self.input_size // p) ** 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# (depth, hidden_size, num_heads) of the DiT paper's model sizes.
_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
# Tiny sizes for tests and the CPU: not in the DiT paper.
_TINY = {"Tiny": (2, 64, 4), "Mini": (4, 128, 4)}

NAMED_CONFIGS: dict[str, DiTConfig] = {}
for _name, (_depth, _width, _heads) in _SIZES.items():
    for _p in (2, 4, 8):
        NAMED_CONFIGS[f"DiT-{_name}/{_p}"] = DiTConfig(
            patch_size=_p, depth=_depth, hidden_size=_width, num_heads=_heads)
for _name, (_depth, _width, _heads) in _TINY.items():
    for _p in (1, 2, 4):
        NAMED_CONFIGS[f"DiT-{_name}/{_p}"] = DiTConfig(
            input_size=16, patch_size=_p, in_channels=4, depth=_depth, hidden_size=_width,
            num_heads=_heads, num_classes=10)


# The built-in default base model (issue #7): pixel-space Fashion-MNIST, 28x28 padded to 32x32, 1 channel.
# Patch 4 (64 tokens) is the pretrained ("powerful") size; flexify with --weak-patch 8 for 16 tokens (4x fewer).
_FMNIST = (6, 128, 4)  # (depth, hidden_size, num_heads): ~1.9M parameters, trains in ~45 min on 2 CPU cores
NAMED_CONFIGS["DiT-FMNIST/4"] = DiTConfig(
    input_size=32, patch_size=4, in_channels=1, depth=_FMNIST[0], hidden_size=_FMNIST[1], num_heads=_FMNIST[2],
    num_classes=10)


def named_config(name: str, **overrides) -> DiTConfig:
    """Look up a named config ("DiT-XL/2", "DiT-Tiny/2", ...) with optional field overrides."""
    from flexcli.errors import FlexcliError

    if name not in NAMED_CONFIGS:
        raise FlexcliError(f"unknown model config '{name}'",
                           f"choose one of: {', '.join(NAMED_CONFIGS)}")
    return dataclasses.replace(NAMED_CONFIGS[name], **overrides)


def heads_for(depth: int, hidden_size: int) -> tuple[int, str]:
    """The head count of the named config with this depth and width, else width/64 (an assumption)."""
    for d, w, h in list(_SIZES.values()) + list(_TINY.values()) + [_FMNIST]:
        if (d, w) == (depth, hidden_size):
            return h, "named config"
    if hidden_size % 64 == 0:
        return hidden_size // 64, "assumed head_dim 64"
    return 1, "assumed 1 head"
