"""Tiny random Wan models for the Wan tests (issue #14): CPU-sized, every weight random."""
import dataclasses

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
    from flexcli.flex.conditions import TextCondition

    return TextCondition(text, torch.ones(text.shape[:2], dtype=torch.long) if mask is None else mask)


def flexified_wan_checkpoint(folder, seed: int = 6, weak=((2, 2, 2), (1, 4, 4)), mode: str = "lora"):
    """With 8 text tokens (text_len): (diffusers transformer folder, flexcli checkpoint flexified with `weak`, its weak parts random as if
    distilled) of a tiny random Wan; returns the diffusers model too."""
    from flexcli.api import build_model
    from flexcli.families import read_checkpoint
    from flexcli.flex.core import flexify_model
    from flexcli.io.checkpoint import save_checkpoint

    reference = tiny_wan(seed=seed)
    reference.save_pretrained(folder / "transformer")
    model = build_model(read_checkpoint(folder / "transformer"))
    model.config = dataclasses.replace(model.config, text_len=8)  # 8 text tokens, not 512: a tiny run's costs
    model = flexify_model(model, list(weak), mode, lora_rank=4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B" in name or name.startswith("flex.size_embed"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    save_checkpoint(model, folder / "wan-flex.safetensors")
    return reference, folder / "transformer", folder / "wan-flex.safetensors"


def prompt_embeds_file(path, text_dim: int = 16, seed: int = 2):
    """Two prompts (6 and 4 tokens, padded to 6) and an encoded negative prompt, as a flexcli prompt-embeds file."""
    from flexcli.text import TextEncoding, save_prompt_embeds

    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    embeds = torch.randn(2, 6, text_dim, generator=g) * mask[..., None]
    negative = TextEncoding(torch.randn(1, 6, text_dim, generator=g) * torch.tensor([1, 1, 1, 0, 0, 0])[None, :, None],
                            torch.tensor([[1, 1, 1, 0, 0, 0]]), [""])
    save_prompt_embeds(path, TextEncoding(embeds, mask, ["a cat", "a dog"], negative=negative))
    return path, embeds, negative.embeds


def video_shard(path, n: int = 8, latent=(4, 4, 4), channels: int = 4, text_dim: int = 16, text_len: int = 6,
                seed: int = 0, negative: bool = True):
    """Video latents (N, C, F, H, W) with caption embeddings, masks and a null caption, as distill reads them."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, text_len + 1, (n,), generator=g)
    mask = (torch.arange(text_len)[None] < lengths[:, None]).long()
    tensors = {"latents": torch.randn(n, channels, *latent, generator=g),
               "prompt_embeds": torch.randn(n, text_len, text_dim, generator=g) * mask[..., None],
               "prompt_attention_mask": mask}
    if negative:
        tensors["negative_prompt_embeds"] = torch.randn(1, 3, text_dim, generator=g)
        tensors["negative_prompt_attention_mask"] = torch.ones(1, 3, dtype=torch.long)
    save_file(tensors, str(path))
    return path


def tiny_fmnist_wan_base(path, seed: int = 0):
    """A random `Wan-FMNIST-Tiny` (flexcli's own Wan, pixel-space moving Fashion-MNIST clips) saved as a base
    checkpoint at `path`: what the video default's demo, check and benchmark run on in tests."""
    from flexcli.io.checkpoint import save_checkpoint
    from flexcli.models.wan import Wan
    from flexcli.models.wan_config import named_wan_config

    torch.manual_seed(seed)
    model = Wan(named_wan_config("Wan-FMNIST-Tiny"))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return save_checkpoint(model.eval(), path)
