"""The Wan 2.1 recipes (issue #14): they resolve, their clips tile the patch sizes they use, and the compute
percentage a sampling recipe's name states is what the one cost model gives for Wan2.1-T2V-1.3B."""
import re
from pathlib import Path

import pytest

from flexcli.compute import step_cost_fn
from flexcli.diffusion.schedule import compute_fraction, parse_schedule
from flexcli.io.video import check_video_shape
from flexcli.models.wan_config import NAMED_CONFIGS
from flexcli.flex.patches import parse_patch
from flexcli.sampling import resolve_config
from flexcli.train.config import resolve

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SAMPLE = sorted((RECIPES / "sample").glob("wan21_t2v_1p3b_*.yaml"))


def test_the_wan_recipes_exist():
    assert (RECIPES / "distill" / "wan21_t2v_1p3b_lora.yaml").is_file() and len(SAMPLE) == 3


@pytest.mark.parametrize("path", SAMPLE, ids=lambda p: p.name)
def test_sampling_recipe(path):
    cfg = resolve_config({"checkpoint": "wan.safetensors", "out": "out"}, path)
    assert (cfg.solver, cfg.steps, cfg.cfg_scale, cfg.flow_shift) == ("flow-unipc", 50, 5.0, 3.0)
    p0 = (1, 2, 2)
    weak = parse_patch(cfg.weak_patch, 3) if cfg.weak_patch is not None else (1, 4, 4)
    schedule = parse_schedule(cfg.schedule or "50/50", cfg.steps, p0, weak)
    latent = check_video_shape(cfg.frames, cfg.height, cfg.width, schedule.sizes())
    m = re.search(r"(\d+)pct", path.name)
    if m:
        cost = step_cost_fn(NAMED_CONFIGS["Wan2.1-T2V-1.3B"], input_size=latent)
        assert round(100 * compute_fraction(schedule, cost, p0)) == int(m.group(1))


def test_distill_recipe():
    cfg = resolve(RECIPES / "distill" / "wan21_t2v_1p3b_lora.yaml")
    assert (cfg.mode, cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.batch_size) == ("lora", 8e-4, 1e-2, 0.02, 512)
    assert cfg.flow_shift == 3.0 and cfg.batch_size % cfg.grad_accum == 0
