"""The Fashion-MNIST domain classifier (issue #7): reproducible training, the shipped weights' accuracy, and the
`fmnist` torch-fidelity extractor and class-conditional accuracy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flexcli.builtin import classifier as C
from flexcli.builtin import train_classifier as T

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "base" / "fashion_mnist_classifier.yaml"
shipped = pytest.mark.skipif(not C.DEFAULT_WEIGHTS.exists(), reason="classifier weights not trained yet")


def test_same_seed_same_loss_sequence():
    cfg = T.resolve(RECIPE, {"data_limit": 256, "batch_size": 32})
    a = T.train(cfg, stop_after=4).losses
    b = T.train(cfg, stop_after=4).losses
    assert len(a) == 4 and a == b
    assert T.train(T.resolve(RECIPE, {"data_limit": 256, "batch_size": 32, "seed": 1}), stop_after=4).losses != a


def test_recipe_errors_name_the_key():
    from flexcli.errors import FlexcliError

    with pytest.raises(FlexcliError, match="unknown classifier setting 'epoch'"):
        T.resolve(None, {"epoch": 3})
    with pytest.raises(FlexcliError, match="'channels' has the wrong type"):
        T.resolve(None, {"channels": 16})


def test_prepare_pads_28_and_reads_uint8():
    img = torch.zeros(2, 28, 28, 3, dtype=torch.uint8)  # NHWC, black
    img[:, 10:12, 10:12] = 255
    x = C.prepare(img)
    assert x.shape == (2, 1, 32, 32) and x.min() == -1 and x.max() == 1
    assert torch.equal(x[:, :, 12:14, 12:14], torch.ones(2, 1, 2, 2))  # shifted by the 2-pixel padding


@shipped
def test_shipped_classifier_is_accurate():
    model, meta = C.load_classifier()
    assert meta["metrics"]["test_accuracy"] >= 0.85  # recorded on the full test split
    assert T.test_accuracy(model, limit=1000) >= 0.85  # recomputed on a slice


@shipped
def test_class_accuracy_and_fidelity_extractor_on_real_images(tmp_path):
    from flexcli.builtin.fashion_mnist import fashion_mnist, to_model_size
    from flexcli.metrics.fid import MetricOptions, compute_metrics
    from flexcli.metrics.images import ImageSet

    images, labels = fashion_mnist("test")
    x = to_model_size(images[:200].float().unsqueeze(1) / 127.5 - 1, 32)
    u8 = torch.clamp(127.5 * x + 128, 0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # as `flexcli sample`
    acc = C.class_accuracy(torch.from_numpy(u8), labels[:200])
    assert acc["accuracy"] >= 0.85 and acc["n"] == 200
    a, b = ImageSet.from_array(u8[:100], "a"), ImageSet.from_array(u8[100:], "b")
    noise = ImageSet.from_array(np.random.default_rng(0).integers(0, 256, u8[:100].shape, dtype=np.uint8), "noise")
    opts = MetricOptions(features="fmnist", metrics=("fid", "kid", "prc"), kid_subset_size=50, kid_subsets=5,
                         cache_dir=tmp_path)
    real = compute_metrics(a, b, opts)
    fake = compute_metrics(noise, b, opts)
    assert 0 <= real["fid"] < fake["fid"] and real["precision"] > fake["precision"]
