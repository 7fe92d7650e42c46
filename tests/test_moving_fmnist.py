"""Moving Fashion-MNIST and its Wan base (issue #15, groundwork): the clips are deterministic, in range, and their
items move along their paths (the ink's bounding box follows the path exactly); held-out items are not training
items; the shapes divide by both weak modes; `flexcli builtin train-base` trains a tiny Wan with flow matching
(finite loss, bit-identical resume; also with single frames of further clips beside each batch), and its
checkpoint loads through the Wan family and flexifies with the temporal 2x4x4 and spatial 1x8x8 modes, the
pretrained size bit-identical."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from flexcli.builtin import moving_fmnist as M
from flexcli.builtin import train_base as P

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "base" / "moving_fmnist_wan.yaml"
TINY = {"model": "Wan-FMNIST-Tiny", "steps": 4, "batch_size": 4, "image_batch_size": 0, "data_limit": 32,
        "warmup_steps": 1, "log_every": 1, "ckpt_every": 100}  # clips only, unless a test adds single frames
PICK = torch.tensor([0, 1, 7, 123, 4567, 59999])


pytestmark = pytest.mark.usefixtures("one_thread")


def test_clips_are_deterministic_and_in_range():
    clips, labels = M.moving_fashion_mnist("train")
    again, _ = M.moving_fashion_mnist("train")
    assert clips.shape == (60000, 1, M.FRAMES, M.SIDE, M.SIDE) and len(labels) == 60000
    x = clips[PICK]
    assert x.shape == (len(PICK), 1, 4, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x, again[PICK]) and torch.equal(clips[3], clips[[3]][0])
    assert x.min() == -1.0 and x.max() <= 1.0
    assert torch.equal(clips[4567], x[4])  # one clip, the same as in a batch
    assert torch.equal(clips[100:200][torch.tensor([23])], clips[torch.tensor([123])])  # slices stay lazy and agree
    assert not torch.equal(M.paths(100, 1), M.paths(100, 2))


def test_items_move_and_their_box_follows_the_path():
    clips, _ = M.moving_fashion_mnist("train")
    pos = clips.positions
    assert pos.min() == 0 and pos.max() == M.SIDE - M.ITEM
    assert bool((pos != pos[:, :1]).any(dim=(1, 2)).all())  # every clip moves
    x = clips[PICK]
    boxes = M.bounding_boxes(x)
    assert (boxes >= 0).all()  # the item is in every frame
    shift = (boxes - boxes[:, :1]).view(len(PICK), M.FRAMES, 2, 2)  # (top, left), (bottom, right)
    moved = (pos[PICK] - pos[PICK][:, :1])[:, :, None, :]
    assert torch.equal(shift, moved.expand_as(shift))  # the whole box shifts with the path, frame by frame
    # the item itself is pasted unchanged at its position
    f, (y, xx) = 3, pos[PICK[2], 3].tolist()
    assert torch.equal(x[2, 0, f, y:y + M.ITEM, xx:xx + M.ITEM], M.item_pixels(clips.images[PICK[2]][None])[0])


def test_paths_are_straight_with_bounces():
    pos = M.paths(2000, 3)
    step = pos[:, 1:] - pos[:, :-1]
    assert step.abs().max() <= M.MAX_SPEED
    inside = ((pos[:, :-1] > M.MAX_SPEED) & (pos[:, :-1] < M.SIDE - M.ITEM - M.MAX_SPEED)).all(-1)
    assert torch.equal(step[:, 1:][inside[:, 1:]], step[:, :-1][inside[:, 1:]])  # away from walls: constant velocity


def test_heldout_items_are_not_training_items():
    train, _ = M.moving_fashion_mnist("train")
    test, labels = M.moving_fashion_mnist("test")
    assert len(test) == 10000 and len(labels) == 10000
    seen = {hashlib.sha1(im.numpy().tobytes()).digest() for im in train.images}
    assert not any(hashlib.sha1(im.numpy().tobytes()).digest() in seen for im in test.images)
    assert not torch.equal(train.positions[:100], test.positions[:100])  # its own paths, too


def test_shapes_divide_by_the_weak_patches():
    from flexcli.models.wan_config import named_wan_config

    cfg = named_wan_config("Wan-FMNIST")
    latent = (M.FRAMES, M.SIDE, M.SIDE)
    assert cfg.latent_size == latent and cfg.patch_size == (1, 4, 4)
    assert [cfg.tokens(latent, p) for p in ((1, 4, 4), (2, 4, 4), (1, 8, 8))] == [256, 128, 64]
    assert all(s % q == 0 for p in ((1, 4, 4), (2, 4, 4), (1, 8, 8)) for s, q in zip(latent, p))


def test_training_data_has_captions_naming_the_class(tmp_path):
    from flexcli.builtin.captions import class_of_prompt, caption_index
    from flexcli.data.text_data import load_text_data
    from flexcli.models.wan import Wan
    from flexcli.models.wan_config import named_wan_config

    model = Wan(named_wan_config("Wan-FMNIST-Tiny"))
    data = load_text_data("moving-fashion-mnist", model, cache_dir=tmp_path, limit=50)
    assert isinstance(data.latents, M.MovingClips) and len(data) == 50
    assert data.describe()["shape"] == [1, 4, 32, 32] and data.embeds.shape[1:] == (16, 384)
    _, labels = M.moving_fashion_mnist("train")
    table, _ = caption_index(labels)
    names = class_of_prompt()
    assert [names[table[int(r)]] for r in data.index] == labels[:50].tolist()
    assert data.null_embeds is not None  # Wan has no learned null caption: the encoded empty one


def test_tiny_flow_matching_run_resumes_exactly(tmp_path):
    for frames in (0, 6):  # clips only, and with single frames of further clips beside each batch
        cfg, run = P.resolve(RECIPE, {**TINY, "image_batch_size": frames}), tmp_path / f"frames{frames}"
        a = P.pretrain(cfg, run / "a")
        assert len(a.losses) == 4 and all(torch.isfinite(torch.tensor(a.losses)))
        assert 1.0 < a.losses[0] < 3.0  # ~ E|noise - x0|^2 with a zero output layer at the start
        part = P.pretrain(cfg, run / "b", stop_after=2)
        rest = P.pretrain(cfg, run / "b", resume=True)
        assert part.losses + rest.losses == a.losses  # exact, on the CPU in fp32
        assert "1x4x4" in (run / "a" / P.CSV_NAME).read_text().splitlines()[1]


def test_joint_image_video_training_adds_single_frames_of_the_next_clips(tmp_path, monkeypatch):
    joint = P.resolve(RECIPE, {**TINY, "image_batch_size": 6})
    order = P._setup(joint, tmp_path / "probe", resume=False).order.take(4 + 6)
    run = P._setup(joint, tmp_path / "probe", resume=False)
    batches, losses, loss = [], [], P._loss
    monkeypatch.setattr(P, "_loss", lambda r, c, d, x0, y: batches.append(x0) or losses.append(loss(r, c, d, x0, y))
                        or losses[-1])
    step_loss, _, _ = P._train_step(run, joint, None)
    clips, frames = batches
    assert torch.equal(clips, run.data.latents[order[:4]])
    assert frames.shape == (6, 1, 1, 32, 32)  # one frame of each of the next 6 clips, as a 1-frame video
    for frame, clip in zip(frames, run.data.latents[order[4:]]):
        assert any(torch.equal(frame[:, 0], clip[:, f]) for f in range(clip.shape[1]))
    weighted = float(4 * losses[0].detach() + 6 * losses[1].detach()) / 10
    assert step_loss == pytest.approx(weighted)  # every example weighs the same, clip or frame
    with pytest.raises(Exception, match="image_batch_size trains single frames of video clips"):
        P.resolve(None, {"model": "DiT-FMNIST/4", "image_batch_size": 8})


def test_checkpoint_loads_as_wan_and_flexifies_bit_identically(tmp_path):
    from flexcli.api import flexify_checkpoint, load_model
    from flexcli.families import read_checkpoint
    from flexcli.flex.conditions import TextCondition

    P.pretrain(P.resolve(RECIPE, {**TINY, "steps": 2}), tmp_path / "run")
    ckpt = tmp_path / "run" / P.EMA_NAME
    read = read_checkpoint(ckpt)
    assert read.family == "wan" and read.config.latent_size == (4, 32, 32)
    assert "flow matching" in read.metadata["training"]["kind"]
    out, flex, _ = flexify_checkpoint(ckpt, ["2,4,4", "1,8,8"], tmp_path / "flex.safetensors", lora_rank=4)
    assert flex.patch_sizes == [(1, 4, 4), (1, 8, 8), (2, 4, 4)]
    base, flex = load_model(ckpt).eval(), load_model(out).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 4, 32, 32, generator=g)
    t = torch.tensor([100.0, 900.0])
    cond = TextCondition(torch.randn(2, 16, 384, generator=g), torch.ones(2, 16, dtype=torch.long))
    with torch.no_grad():
        ref = base(x, t, cond)
        assert torch.equal(flex(x, t, cond), ref) and torch.equal(flex(x, t, cond, patch_size=(1, 4, 4)), ref)
        for p in ((2, 4, 4), (1, 8, 8)):
            weak = flex(x, t, cond, patch_size=p)
            assert weak.shape == x.shape and torch.isfinite(weak).all()
