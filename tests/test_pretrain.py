"""The base-model pre-training driver (issue #7): recipe, determinism, resume and the committed checkpoint."""
from __future__ import annotations

from pathlib import Path

import pytest

from flexcli.train import pretrain as P

ROOT = Path(__file__).resolve().parents[1]
TINY = {"steps": 5, "batch_size": 8, "data_limit": 64, "warmup_steps": 2, "log_every": 1, "ckpt_every": 3}


def _tiny(**kw) -> P.PretrainConfig:
    return P.resolve(ROOT / "recipes" / "base" / "fashion_mnist_dit.yaml", {**TINY, **kw})


def test_same_seed_same_loss_curve(tmp_path):
    a = P.pretrain(_tiny(), tmp_path / "a")
    b = P.pretrain(_tiny(), tmp_path / "b")
    assert len(a.losses) == 5 and a.losses == b.losses  # exact, on the CPU in fp32
    c = P.pretrain(_tiny(seed=1), tmp_path / "c")
    assert c.losses != a.losses
    for name in (P.EMA_NAME, P.RAW_NAME, P.CSV_NAME, P.PLOT_NAME, P.CONFIG_NAME):
        assert (tmp_path / "a" / name).exists()


def test_resume_continues_the_same_curve(tmp_path):
    full = P.pretrain(_tiny(), tmp_path / "full")
    part = P.pretrain(_tiny(), tmp_path / "part", stop_after=3)
    rest = P.pretrain(_tiny(), tmp_path / "part", resume=True)
    assert part.losses + rest.losses == full.losses
    rows = (tmp_path / "part" / P.CSV_NAME).read_text().splitlines()
    assert len(rows) == 1 + 5


def test_recipe_errors_name_the_key():
    from flexcli.errors import FlexcliError

    with pytest.raises(FlexcliError, match="unknown setting 'stepz'"):
        P.resolve(None, {"stepz": 3})
    with pytest.raises(FlexcliError, match="'lr' has the wrong type"):
        P.resolve(None, {"lr": "fast"})
    with pytest.raises(FlexcliError, match="unknown model"):
        P.resolve(None, {"model": "DiT-Huge/1"})


def test_lr_schedule_warms_up_and_decays():
    cfg = P.PretrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert P.lr_at(cfg, 0) == pytest.approx(0.1) and P.lr_at(cfg, 10) == pytest.approx(1.0)
    assert P.lr_at(cfg, 100) == pytest.approx(0.1)
