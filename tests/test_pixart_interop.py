"""diffusers interop (issue #12): a flexified PixArt in diffusers' PixArtAlphaPipeline (as its transformer, with a
weak-first patch schedule) gives, for the same noise, the latents `flexcli sample` gives with that schedule."""
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flexcli.api import flexify_checkpoint, load_model
from flexcli.cli import app
from flexcli.diffusion.samplers import make_generators, per_sample_noise
from flexcli.diffusion.t2i_solvers import pixart_dpm_solver_scheduler, pixart_sa_solver_scheduler
from flexcli.interop import FlexTransformer
from flexcli.io.checkpoint import save_checkpoint
from flexcli.text import TextEncoding, save_prompt_embeds
from pixart_helpers import tiny_pixart

runner = CliRunner()
STEPS, SCHEDULE, CFG = 6, "3/2", 4.5  # cond powerful for the last 3 steps, guidance for the last 2: mixed steps


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("interop")
    tiny_pixart(sample_size=8).save_pretrained(d / "t")
    path, model, _ = flexify_checkpoint(d / "t", [4], d / "flex.safetensors", lora_rank=4)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # a "trained" weak size: non-zero LoRA B and size embedding
        for name, p in model.named_parameters():
            if ".lora_B" in name or name.startswith("flex."):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    save_checkpoint(model, path)
    mask = torch.tensor([[1] * 5 + [0] * 3, [1] * 8])
    enc = TextEncoding(torch.randn(2, 8, 16, generator=g), mask, ["a", "b"])
    enc.negative = TextEncoding(torch.randn(1, 8, 16, generator=g), torch.tensor([[1, 1] + [0] * 6]), [""])
    save_prompt_embeds(d / "embeds.safetensors", enc)
    return d, path, enc


def _flexcli(d, path, solver):
    out = d / f"sample-{solver}"
    res = runner.invoke(app, ["sample", str(path), "-o", str(out), "--prompt-embeds", str(d / "embeds.safetensors"),
                              "--solver", solver, "--steps", str(STEPS), "--schedule", SCHEDULE, "--guidance", "cfg",
                              "--cfg-scale", str(CFG), "-n", "2", "--seed", "0"])
    assert res.exit_code == 0, res.output
    return torch.from_numpy(np.load(out / "latents.npz")["arr_0"])


@pytest.mark.parametrize("solver,scheduler", [("dpm-solver", pixart_dpm_solver_scheduler),
                                              ("sa-solver", pixart_sa_solver_scheduler)])
def test_pipeline_latents_equal_flexcli_sample(setup, solver, scheduler):
    from diffusers import PixArtAlphaPipeline

    d, path, enc = setup
    pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler(),
                               transformer=FlexTransformer.from_checkpoint(path, SCHEDULE, steps=STEPS))
    gens = make_generators([0, 1])  # flexcli's per-sample seeds: the same initial noise ...
    noise = per_sample_noise((2, 4, 8, 8), gens)
    with torch.no_grad():
        latents = pipe(prompt=None, negative_prompt=None, prompt_embeds=enc.embeds, prompt_attention_mask=enc.mask,
                       negative_prompt_embeds=enc.negative.embeds.expand(2, -1, -1),
                       negative_prompt_attention_mask=enc.negative.mask.expand(2, -1),
                       latents=noise, generator=gens,  # ... and SA-Solver's per-step noise, row i from seed i
                       num_inference_steps=STEPS, guidance_scale=CFG, height=64, width=64,
                       use_resolution_binning=False, output_type="latent").images
    ours = _flexcli(d, path, solver)
    assert pipe.transformer.step == STEPS
    assert (latents - ours).abs().max() < 1e-5, (latents - ours).abs().max()


def test_wrapper_follows_the_schedule(setup):
    _, path, enc = setup
    model = load_model(path)
    wrapper = FlexTransformer(model, SCHEDULE, steps=STEPS)
    assert [wrapper.sizes(k) for k in range(STEPS)] == [(4, 4), (4, 4), (4, 4), (2, 4), (2, 2), (2, 2)]
    x = torch.randn(4, 4, 8, 8)
    embeds, mask = torch.cat([enc.embeds] * 2), torch.cat([enc.mask] * 2)
    calls = []
    model.forward = lambda x, t, c, patch_size=None: calls.append(patch_size) or torch.zeros(len(x), 8, 8, 8)
    for t in (999, 800, 600, 400, 200, 10, 999):  # the last call starts a new run
        out = wrapper(x, embeds, torch.tensor([t]), encoder_attention_mask=mask, return_dict=False)[0]
        assert out.shape == (4, 8, 8, 8)
    assert calls == [4, 4, 4, 4, 2, 2, 2, 4]  # one pass per agreeing step, two (guidance, cond) when mixed
    with pytest.raises(ValueError, match="patch sizes"):
        FlexTransformer(model, [8] * 3)
