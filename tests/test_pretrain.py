"""The base-model pre-training driver (issue #7): recipe, determinism, resume and the committed checkpoint."""
from __future__ import annotations

from pathlib import Path

import pytest

from flexcli.builtin import train_base as P

ROOT = Path(__file__).resolve().parents[1]
TINY = {"steps": 5, "batch_size": 8, "data_limit": 64, "warmup_steps": 2, "log_every": 1, "ckpt_every": 100}


def _tiny(**kw) -> P.PretrainConfig:
    return P.resolve(ROOT / "recipes" / "base" / "fashion_mnist_dit.yaml", {**TINY, **kw})


def test_same_seed_same_loss_curve_and_exact_resume(tmp_path):
    a = P.pretrain(_tiny(), tmp_path / "a")
    assert len(a.losses) == 5
    for name in (P.EMA_NAME, P.RAW_NAME, P.CSV_NAME, P.PLOT_NAME, P.CONFIG_NAME, P.STATE_NAME):
        assert (tmp_path / "a" / name).exists()
    part = P.pretrain(_tiny(), tmp_path / "b", stop_after=3)  # interrupted after 3 steps ...
    rest = P.pretrain(_tiny(), tmp_path / "b", resume=True)  # ... and resumed
    assert part.losses + rest.losses == a.losses  # exact, on the CPU in fp32
    rows = (tmp_path / "b" / P.CSV_NAME).read_text().splitlines()
    assert len(rows) == 1 + 5
    assert P.pretrain(_tiny(seed=1, steps=2), tmp_path / "c").losses != a.losses[:2]


def test_refuses_a_used_folder_without_resume(tmp_path):
    from flexcli.errors import FlexcliError

    (tmp_path / "x.txt").write_text("")
    with pytest.raises(FlexcliError, match="not empty"):
        P.pretrain(_tiny(), tmp_path)


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
