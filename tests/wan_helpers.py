"""Tiny random Wan models for the Wan tests (issue #14): CPU-sized, every weight random."""
import torch

# 2 layers, 2 heads x 12 dims (width 24), ffn 32, text_dim 16, 4 latent channels.
TINY_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                text_dim=16, freq_dim=8, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)


def tiny_wan(seed: int = 0, **overrides):
    """A diffusers WanTransformer3DModel with every parameter random (norm weights too, so that a swapped or
    misplaced tensor changes the output)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**{**TINY_WAN, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def wan_inputs(model, frames: int = 2, height: int = 4, width: int = 6, batch: int = 2, text_len: int = 5,
               seed: int = 1):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, frames, height, width, generator=g)
    t = torch.tensor([999.0, 321.5])[:batch]
    text = torch.randn(batch, text_len, cfg.text_dim, generator=g)
    return x, t, text


@torch.no_grad()
def wan_forward(model, x, t, text):
    return model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]


def flex_wan(reference, text_len: int = 5):
    """flexcli's Wan holding a diffusers model's tensors (strict load), frozen, in eval mode."""
    from flexcli.models.wan import Wan
    from flexcli.models.wan_config import WanConfig

    model = Wan(WanConfig.from_dict({**dict(reference.config), "text_len": text_len}))
    model.load_state_dict(reference.state_dict(), strict=True)
    return model.requires_grad_(False).eval()


def text_condition(text, mask=None):
    from flexcli.flex.core import TextCondition

    return TextCondition(text, torch.ones(text.shape[:2], dtype=torch.long) if mask is None else mask)
