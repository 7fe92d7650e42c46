"""Wan 2.1 text-to-video transformer configurations (diffusers' `WanTransformer3DModel` names), the released
sizes, and tiny ones for tests and the CPU (issue #14)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

# Released Wan 2.1 text-to-video sizes: (inner dim, layers) -> (name, heads). Heads are not in the tensors.
# Source: Wan-Video/Wan2.1 wan/configs/wan_t2v_1_3B.py and wan_t2v_14B.py (head_dim 128 in both).
KNOWN_SIZES = {(1536, 30): ("Wan2.1-T2V-1.3B", 12), (5120, 40): ("Wan2.1-T2V-14B", 40)}
WAN_HEAD_DIM = 128
WAN_EPS = 1e-6  # every released Wan 2.1 config (WanModel and diffusers defaults)
WAN_ROPE_MAX_SEQ_LEN = 1024  # the original code's fixed rope_params(1024, ...); diffusers' default
WAN_TEXT_LEN = 512  # umT5 tokens per prompt: the pipelines trim the encoder output and zero-pad it to this length


@dataclass(frozen=True)
class WanConfig:
    """Hyper-parameters of a Wan 2.1 text-to-video transformer (diffusers' config names; defaults: T2V-1.3B)."""

    patch_size: tuple = (1, 2, 2)  # (p_t, p_h, p_w): the pretrained ("powerful") patch size
    num_attention_heads: int = 12
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096  # umT5-XXL
    freq_dim: int = 256
    ffn_dim: int = 8960
    num_layers: int = 30
    cross_attn_norm: bool = True
    qk_norm: str = "rms_norm_across_heads"
    eps: float = WAN_EPS
    rope_max_seq_len: int = WAN_ROPE_MAX_SEQ_LEN
    text_len: int = WAN_TEXT_LEN  # text tokens the cross-attention sees (original config.json "text_len")
    # the (F, H, W) latent the model is made for, where it is not Wan 2.1's 480p (the built-in pixel-space model);
    # None: `flexcli.families.wan.DEFAULT_LATENT`. Not a diffusers field (like text_len).
    latent_size: tuple | None = None

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if self.latent_size is not None:
            object.__setattr__(self, "latent_size", tuple(int(s) for s in self.latent_size))

    # -- names the flex core and the compute model use ----------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def depth(self) -> int:
        return self.num_layers

    @property
    def num_heads(self) -> int:
        return self.num_attention_heads

    def tokens(self, latent: tuple, patch: tuple | None = None) -> int:
        """Tokens of a (F, H, W) latent cut into `patch` (default the pretrained one)."""
        p = tuple(patch or self.patch_size)
        return math.prod(s // q for s, q in zip(latent, p))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        d["latent_size"] = list(self.latent_size) if self.latent_size is not None else None
        return d

    def diffusers_config(self) -> dict:
        """The `WanTransformer3DModel` config (text-to-video: no image conditioning)."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("text_len", "latent_size")}
        return {**d, "image_dim": None, "added_kv_proj_dim": None, "pos_embed_seq_len": None}

    @classmethod
    def from_dict(cls, d: dict) -> "WanConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


NAMED_CONFIGS: dict[str, WanConfig] = {
    "Wan2.1-T2V-1.3B": WanConfig(),
    "Wan2.1-T2V-14B": WanConfig(num_attention_heads=40, ffn_dim=13824, num_layers=40),
    # Tiny sizes for tests and the CPU: not released.
    # The built-in video default (issue #15): pixel-space moving Fashion-MNIST (1 x 4 x 32 x 32), patch 1x4x4 =
    # 256 tokens, width 128 (4 heads x 32), 6 layers, 384-d MiniLM captions of 16 tokens. Trained from scratch.
    "Wan-FMNIST": WanConfig(patch_size=(1, 4, 4), num_attention_heads=4, attention_head_dim=32, in_channels=1,
                            out_channels=1, text_dim=384, freq_dim=256, ffn_dim=512, num_layers=6, text_len=16,
                            latent_size=(4, 32, 32)),
    "Wan-FMNIST-Tiny": WanConfig(patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=12, in_channels=1,
                                 out_channels=1, text_dim=384, freq_dim=16, ffn_dim=32, num_layers=1, text_len=16,
                                 latent_size=(4, 32, 32)),
    "Wan-Tiny": WanConfig(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
                          freq_dim=8, ffn_dim=32, num_layers=2, text_len=8),
}


def named_wan_config(name: str, **overrides) -> WanConfig:
    from flexcli.errors import FlexcliError

    if name not in NAMED_CONFIGS:
        raise FlexcliError(f"unknown Wan config '{name}'", f"choose one of: {', '.join(NAMED_CONFIGS)}")
    return dataclasses.replace(NAMED_CONFIGS[name], **overrides)
