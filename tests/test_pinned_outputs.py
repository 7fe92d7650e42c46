"""Behaviour is preserved bit for bit (issue #11): `flexcli sample` reproduces the arrays and FLOPs recorded from
the code before the flex-core refactor (tests/pins/, written by tests/pinned.py), for a flexified DiT-S/2 with
name-seeded random weights and for the shipped Fashion-MNIST model: LoRA merged and unmerged, shared mode, weak
guidance and standard CFG, packed and separate, three solvers."""
import json

import numpy as np
import pytest
import torch

import pinned


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return pinned.checkpoints(tmp_path_factory.mktemp("pinned"))


@pytest.fixture(scope="module")
def recorded():
    return json.loads((pinned.PINS / "flops.json").read_text())


@pytest.mark.parametrize("case", sorted(pinned.CASES))
def test_sample_is_bit_identical_to_pinned(case, ckpts, recorded, tmp_path):
    res = pinned.sample_case(case, ckpts, tmp_path)
    with np.load(pinned.PINS / f"{case}.npz") as z:
        expected = {f"{k}.npz": z[k] for k in z.files}
    assert sorted(res["arrays"]) == sorted(expected)
    for k, arr in res["arrays"].items():
        assert arr.dtype == expected[k].dtype and arr.shape == expected[k].shape
        assert np.array_equal(arr, expected[k]), (case, k, float(np.abs(arr.astype(np.float64) - expected[k]).max()))
    assert res["flops"] == recorded["sample"][case]


def test_info_costs_are_pinned(ckpts, recorded):
    assert pinned.info_costs(ckpts) == recorded["info"]
