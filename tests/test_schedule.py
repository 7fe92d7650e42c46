"""Patch schedules, compute fractions (the paper's DiT-XL/2 numbers through the FLOPs model) and guidance."""
import pytest
import torch

from flexcli.diffusion import schedule as G
from flexcli.diffusion.schedule import compute_fraction, for_compute, from_list, parse_schedule
from flexcli.errors import FlexcliError
from flexcli.models.configs import named_config
from flexcli.compute import step_cost_fn

XL = named_config("DiT-XL/2")


def test_x_over_y_means_powerful_last_steps():
    s = parse_schedule("3/1", 5, 2, 4)
    assert s.cond == (4, 4, 2, 2, 2) and s.uncond == (4, 4, 4, 4, 2)
    assert parse_schedule("2", 4, 2, 4).uncond == (4, 4, 2, 2)
    assert parse_schedule("4/4", 4, 2, None).cond == (2, 2, 2, 2)  # all-powerful on a plain DiT
    r = parse_schedule("3/1", 5, 2, 4).reversed()  # weak-last ablation
    assert r.cond == (2, 2, 2, 4, 4) and r.uncond == (2, 4, 4, 4, 4)


def test_three_patch_sizes_and_branch_lists():
    s = parse_schedule("8:2,4:2,2:1", 5, 2, 4)
    assert s.cond == s.uncond == (8, 8, 4, 4, 2)
    s = parse_schedule("8:1,4:2,2:2/8:3,2:2", 5, 2, 4)
    assert s.cond == (8, 4, 4, 2, 2) and s.uncond == (8, 8, 8, 2, 2)
    assert from_list([4, 4, 2], 3).cond == (4, 4, 2)
    e = from_list({"cond": [4, 2], "uncond": [8, 8]}, 2)
    assert e.cond == (4, 2) and e.uncond == (8, 8)


@pytest.mark.parametrize("spec", ["", "abc", "1/2/3", "4:3,2", "4:2,2:2", "300/10", "4:1/10", "0:2,2:1"])
def test_unparsable_schedules(spec):
    with pytest.raises(FlexcliError) as e:
        parse_schedule(spec, 3 if ":" in spec else 250, 2, 4)
    assert "\n" not in str(e.value)


def test_paper_compute_fractions_on_dit_xl2():
    """App. B.4 / D.3: 250 DDPM steps with CFG on DiT-XL/2 (p=2, weak p=4, shared mode §3.1): 130/130 uses 64 %
    of the compute and 70/70 uses 46 % (Figs. 37-43); 90/50 needs the same compute as 70/70."""
    cost = step_cost_fn(XL, shared=True)

    def pct(spec):
        return 100 * compute_fraction(parse_schedule(spec, 250, 2, 4), cost, 2)

    assert pct("250/250") == 100
    assert round(pct("130/130")) == 64
    assert round(pct("70/70")) == 46
    assert abs(pct("90/50") - pct("70/70")) < 0.01
    assert pct("30/0") < pct("70/70")
    # Without the shared-mode weight projections (plain FLOPs model) the numbers are the same to 0.01 %.
    plain = step_cost_fn(XL)
    assert abs(100 * compute_fraction(parse_schedule("130/130", 250, 2, 4), plain, 2) - pct("130/130")) < 0.01


def test_compute_target_picks_the_schedule_that_meets_it():
    cost = step_cost_fn(XL, shared=True)
    s = for_compute(0.64, 250, cost, 2, 4)
    assert s.cond == parse_schedule("130/130", 250, 2, 4).cond
    assert compute_fraction(s, cost, 2) <= 0.64
    assert compute_fraction(parse_schedule("131/131", 250, 2, 4), cost, 2) > 0.64
    assert for_compute(1.0, 250, cost, 2, 4).cond == (2,) * 250
    with pytest.raises(FlexcliError, match="below the all-weak cost"):
        for_compute(0.2, 250, cost, 2, 4)
    with pytest.raises(FlexcliError):
        for_compute(1.5, 250, cost, 2, 4)


def test_packed_costs_more_with_dense_attention():
    sep, packed = step_cost_fn(XL), step_cost_fn(XL, packing="packed")
    sparse = step_cost_fn(XL, packing="packed", dense=False)
    assert packed(2, 4) > sep(2, 4) == sparse(2, 4)
    assert packed(2, 2) == sep(2, 2)  # one size: one batched pass either way


# ---------------------------------------------------------------------------------------------------
def test_weak_guidance_by_hand():
    cond = torch.tensor([[[[1.0]], [[2.0]], [[3.0]], [[4.0]], [[10.0]], [[20.0]], [[30.0]], [[40.0]]]])
    weak_cond = torch.tensor([[[[0.5]], [[1.0]], [[5.0]], [[2.0]], [[-1.0]], [[-2.0]], [[-3.0]], [[-4.0]]]])
    s1 = 4.0
    s2 = G.linked_weak_scale(s1)
    assert s2 == pytest.approx(2.2) and (1 - s1) / (1 - s2) == pytest.approx(2.5)
    assert G.uses_weak_guidance(2, 4) and not G.uses_weak_guidance(2, 2) and not G.uses_weak_guidance(4, 2)
    assert not G.uses_weak_guidance(2, 4, "cfg")
    scale = G.step_scale(2, 4, s1, s2)
    assert scale == s2 and G.step_scale(2, 2, s1, s2) == s1
    # s0: the scale of steps whose branches are both weak; the powerful and weak-guided steps keep s1 and s2
    assert G.step_scale(4, 4, s1, s2, s0=8.0, powerful=2) == 8.0 and G.step_scale(4, 4, s1, s2, powerful=2) == s1
    assert G.step_scale(2, 2, s1, s2, s0=8.0, powerful=2) == s1
    assert G.step_scale(2, 4, s1, s2, s0=8.0, powerful=2) == s2
    assert G.step_scale(4, 4, s1, s2, "cfg", s0=8.0, powerful=2) == 8.0
    out = G.combine(cond, weak_cond, scale, eps_channels=4)
    # eps = weak + 2.2 (cond - weak), by hand; variance channels from the conditional branch
    expected = [0.5 + 2.2 * 0.5, 1.0 + 2.2 * 1.0, 5.0 + 2.2 * -2.0, 2.0 + 2.2 * 2.0, 10, 20, 30, 40]
    assert out.flatten().tolist() == pytest.approx(expected)
    # DiT's 3-channel variant: the 4th eps channel is the conditional one, unguided
    out3 = G.combine(cond, weak_cond, s1, eps_channels=4, guided_channels=3)
    assert out3.flatten().tolist() == pytest.approx([0.5 + 4 * 0.5, 1 + 4 * 1, 5 + 4 * -2, 4, 10, 20, 30, 40])
