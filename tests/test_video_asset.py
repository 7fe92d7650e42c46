"""The shipped video base (issue #15, `flexcli/assets/moving_fmnist_wan/`): it loads as a pixel-space Wan with
MiniLM captions and makes clips of its own size, carries its training log and check, and its text conditioning is
real: frames of clips prompted with held-out captions (templates never seen in training) of class A show class A
far above chance (10 %), the item moves, and swapping the prompts, with the same seeds, swaps the classes.
Seeded; the shipped classifier judges the item crops (`flexcli.builtin.video_metrics`). The base's check reaches
the issue's bar (70 % of frames; its check: 70.9 %), and these bounds hold it to what it does."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexcli.builtin import classifier as fmnist_classifier

ASSET = Path(__file__).resolve().parents[1] / "flexcli" / "assets" / "moving_fmnist_wan"
CKPT = ASSET / "model.safetensors"
pytestmark = pytest.mark.skipif(not CKPT.exists() or not fmnist_classifier.DEFAULT_WEIGHTS.exists(),
                                reason="video base or classifier not trained yet")
PER_CLASS, STEPS, CFG = 2, 20, 4.0
SHIFT = 3  # the swap: class c's seeds get a prompt of class c + 3 (mod 10)


def test_asset_loads_with_its_log_and_check():
    from flexcli.api import load_model
    from flexcli.builtin.captions import TEXT_LENGTH
    from flexcli.builtin.moving_fmnist import FRAMES, SIDE

    model = load_model(CKPT)
    assert model.family == "wan" and model.text_length == TEXT_LENGTH and model.text_width == 384
    assert model.patch_sizes == [(1, 4, 4)] and model.config.latent_size == (FRAMES, SIDE, SIDE)
    for name in ("config.yaml", "losses.csv", "losses.png", "train.log", "check.json", "grid.gif", "grid.png"):
        assert (ASSET / name).exists(), name
    check = json.loads((ASSET / "check.json").read_text())
    assert check["conditioning"].startswith("held-out captions") and check["num_samples"] >= 200
    # the check as measured: 70.9 % of frames right, the bar is 70 % (see the asset README)
    assert check["passed"] and check["class_accuracy"] >= check["target"] == 0.7
    assert check["motion"]["generated"]["moving"] >= 0.9


def _scores(prompts: list[str]):
    """The clip scores of one clip per prompt (seeds 0..N-1, flow-unipc, classifier-free guidance)."""
    from flexcli.api import load_model
    from flexcli.builtin.video_metrics import score_clips
    from flexcli.sampling import SampleConfig, sample

    cfg = SampleConfig(checkpoint=str(CKPT), num_samples=len(prompts), steps=STEPS, solver="flow-unipc",
                       flow_shift=3.0, cfg_scale=CFG, guidance="cfg", seed=0, batch_size=len(prompts),
                       prompts=prompts, text_encoder="minilm")
    clips, _, _ = sample(load_model(CKPT).eval(), cfg, device="cpu")
    return score_clips(clips)


def test_text_conditioning_is_real_the_item_moves_and_swapping_the_prompt_swaps_the_class():
    from flexcli.builtin.captions import heldout_prompts

    prompts, labels = heldout_prompts(PER_CLASS)  # prompt i names class i mod 10
    got = _scores(prompts)
    right = got.accuracy(labels)
    swapped_labels = [(y + SHIFT) % 10 for y in labels]
    swapped = _scores([prompts[(i // 10) * 10 + y] for i, y in enumerate(swapped_labels)])  # same seeds
    follows, stays = swapped.accuracy(swapped_labels), swapped.accuracy(labels)
    # measured with these seeds: 77.5 % right, 95 % of clips moving, 80 % following the swap, 0 % staying
    assert right >= 0.6 and got.motion()["moving"] >= 0.7, got.predicted  # chance: 0.1
    assert follows >= 0.6 and stays <= 0.1, swapped.predicted
