"""The shipped text-to-image base (issue #13, `flexcli/assets/fashion_mnist_pixart/`): it loads as a PixArt with
MiniLM captions, carries its training log, and its text conditioning is real: held-out prompts (templates never
seen in training) of class A give class A far above chance, and swapping the prompts, with the same seeds,
swaps the classes. Seeded; the shipped classifier judges. The base passes the issue's bar (87.5 % class accuracy in
its check, 70 % asked; see flexcli/assets/README.md), and the bounds here hold it to that bar (chance: 10 %):
with these seeds it gives 92.5 % right, 85 % following the swapped prompt, 0 % staying with the old one and
100 % of the predictions changed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flexcli.builtin import classifier as fmnist_classifier

ASSET = Path(__file__).resolve().parents[1] / "flexcli" / "assets" / "fashion_mnist_pixart"
CKPT = ASSET / "model.safetensors"
pytestmark = pytest.mark.skipif(not CKPT.exists() or not fmnist_classifier.DEFAULT_WEIGHTS.exists(),
                                reason="text-to-image base or classifier not trained yet")
PER_CLASS, STEPS, CFG = 4, 50, 4.0
SHIFT = 3  # the swap: class c's seeds get a prompt of class c + 3 (mod 10)


def test_asset_loads_with_its_log_and_check():
    from flexcli.api import load_model
    from flexcli.builtin.captions import TEXT_LENGTH

    model = load_model(CKPT)
    assert model.family == "pixart" and model.text_length == TEXT_LENGTH and model.text_width == 384
    assert model.learned_null_caption() is not None and model.patch_sizes == [4]
    for name in ("config.yaml", "losses.csv", "losses.png", "check.json", "grid.png"):
        assert (ASSET / name).exists(), name
    check = json.loads((ASSET / "check.json").read_text())
    assert check["conditioning"].startswith("held-out captions") and check["num_samples"] >= 200


def _classify(prompts: list[str]) -> list[int]:
    """The shipped classifier's verdict on one sample per prompt (seeds 0..N-1, DDPM, classifier-free guidance)."""
    from flexcli.api import load_model
    from flexcli.sampling import SampleConfig, sample

    cfg = SampleConfig(checkpoint=str(CKPT), num_samples=len(prompts), steps=STEPS, solver="ddpm", cfg_scale=CFG,
                       guidance="cfg", seed=0, batch_size=len(prompts), prompts=prompts, text_encoder="minilm")
    _, images, _ = sample(load_model(CKPT).eval(), cfg, device="cpu")
    return fmnist_classifier.predict(fmnist_classifier.load_classifier()[0], images.permute(0, 3, 1, 2)).tolist()


def test_text_conditioning_is_real_and_swapping_the_prompt_swaps_the_class():
    from flexcli.builtin.captions import heldout_prompts

    prompts, labels = heldout_prompts(PER_CLASS)  # prompt i names class i mod 10
    got = _classify(prompts)
    hits = sum(p == y for p, y in zip(got, labels)) / len(labels)
    assert hits >= 0.7, (hits, got)  # the bar; chance: 0.1

    swapped_labels = [(y + SHIFT) % 10 for y in labels]
    swapped = _classify([prompts[(i // 10) * 10 + y] for i, y in enumerate(swapped_labels)])  # same seeds
    follows = sum(p == y for p, y in zip(swapped, swapped_labels)) / len(labels)
    stays = sum(p == y for p, y in zip(swapped, labels)) / len(labels)
    changed = sum(a != b for a, b in zip(got, swapped)) / len(labels)
    assert follows >= 0.7 and stays <= 0.1 and changed >= 0.8, (follows, stays, changed, swapped)
