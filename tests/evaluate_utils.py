"""Shared by the evaluate tests: small image sets, a tiny registered feature extractor, random Inception weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from flexcli.metrics.fid import random_inception_weights, register_features


@pytest.fixture
def one_blas_thread():
    """torch and numpy's OpenBLAS on one thread for the test (restored after). On a busy 2-core machine FID's
    2048x2048 eigvals spin-waited 35 s instead of 7 s. numpy's part is skipped where its BLAS is not the
    bundled OpenBLAS."""
    import ctypes
    import glob
    import os

    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*.so*"))
    lib, get, set_ = None, None, None
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
            get, set_ = lib.scipy_openblas_get_num_threads64_, lib.scipy_openblas_set_num_threads64_
            break
        except (OSError, AttributeError):
            get = set_ = None
    before_torch = torch.get_num_threads()
    torch.set_num_threads(1)
    before = get() if get is not None else None
    if set_ is not None:
        set_(1)
    try:
        yield
    finally:
        torch.set_num_threads(before_torch)
        if set_ is not None:
            set_(before)


@pytest.fixture(scope="session")
def inception(tmp_path_factory):
    """Randomly initialised (Kaiming) InceptionV3 weights in torch-fidelity's layout, saved once per session
    (the file is shared by every test module that imports this fixture)."""
    path = tmp_path_factory.getbasetemp() / "inception-random" / "weights-inception-2015-12-05-6726825d.pth"
    if not path.is_file():
        path.parent.mkdir(exist_ok=True)
        random_inception_weights(path)
    return path


def images(n: int, size: int = 16, seed: int = 0, shift: int = 0, channels: int = 3) -> np.ndarray:
    """Smooth random uint8 images N x H x W x C (upsampled 4x4 noise), optionally brightness-shifted."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, channels, 4, 4, generator=g) * 200 + 20
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False) + shift
    return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


class TinyFeatures(FeatureExtractorBase):
    """A deterministic 48-d extractor (4x4 average-pooled pixels) with 10 'logits': fast stand-in for tests."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(48, 10, generator=g) / 7)

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3
        f = F.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)
        out = {"feat": f, "logits": f @ self.w}
        return tuple(out[k] for k in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return "feat", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "feat", "kid": "feat", "prc": "feat"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 4, 4, dtype=torch.uint8)


def register_tiny() -> str:
    register_features("tiny-test", TinyFeatures, metrics=("fid", "isc", "kid", "prc"), fingerprint="tiny-v1",
                      description="test extractor", replace=True)
    return "tiny-test"


def write_run(folder: Path, arr: np.ndarray, schedule: str, cfg: float, frac: float, wall: float = 1.0,
              prompts=None) -> Path:
    """A run folder shaped like `flexcli sample`'s output (samples.npz + run.json, flexcli.sampling.run_record)."""
    folder.mkdir(parents=True)
    np.savez(folder / "samples.npz", arr_0=arr)
    rec = {"config": {"schedule": schedule, "cfg_scale": cfg, "num_samples": len(arr), "seed": 0},
           "seeds": list(range(len(arr))), "schedule": {"spec": schedule, "cond": [], "uncond": []},
           "flops": {"total": frac * 2e9, "baseline_all_powerful": 2e9, "compute_fraction": frac},
           "wall_time_s": wall}
    if prompts is not None:
        rec["prompts"] = prompts
    (folder / "run.json").write_text(json.dumps(rec))
    return folder


TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A tiny open_clip architecture registered with add_model_config, random weights saved to a file."""
    import open_clip

    d = tmp_path_factory.getbasetemp() / "tiny-clip"  # shared by every module that imports this fixture
    w = d / "tiny_clip.pt"
    if not w.is_file():
        d.mkdir(exist_ok=True)
        (d / "flexcli-test-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
        open_clip.add_model_config(d)
        torch.manual_seed(0)
        torch.save(open_clip.create_model("flexcli-test-tiny-clip").state_dict(), w)
    return "flexcli-test-tiny-clip", w
