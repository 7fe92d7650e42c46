"""Metrics: flexcli's values equal direct torch-fidelity calls; FID ~ 0 on identical sets, larger on shifted ones;
the extractor registry, reference caching, image reading (folders, .npz, grayscale) and CLIP score, all offline."""
import math

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image

from evaluate_utils import images, inception, one_blas_thread, register_tiny, tiny_clip  # noqa: F401 (fixtures)
from flexcli.errors import FlexcliError
from flexcli.metrics.fid import MetricOptions, compute_metrics, feature_spec, fidelity_kwargs
from flexcli.metrics.images import ImageSet, open_images

KEYS = {"fid": "frechet_inception_distance", "isc": "inception_score_mean", "isc_std": "inception_score_std",
        "kid": "kernel_inception_distance_mean", "kid_std": "kernel_inception_distance_std",
        "precision": "precision", "recall": "recall"}


def _direct(samples, ref, **kw):
    """torch_fidelity.calculate_metrics called directly, no flexcli code in between, no cache."""
    return torch_fidelity.calculate_metrics(input1=samples, input2=ref, cuda=False, verbose=False, save_cpu_ram=True,
                                            cache=False, isc=True, fid=True, kid=True, prc=True, **kw)


def test_inception_metrics_equal_direct_call_and_fid_behaviour(inception, one_blas_thread, tmp_path):
    """One Inception pass over 3 sets of 8: equality with torch-fidelity, FID ~ 0 when identical, > 0 when shifted."""
    ref_arr = images(8, seed=1)
    ref = ImageSet.from_array(ref_arr, "ref")
    opts = MetricOptions(inception_weights=inception, kid_subset_size=4, kid_subsets=20, cache_dir=tmp_path / "c")
    same = compute_metrics(ImageSet.from_array(ref_arr.copy(), "same"), ref, opts)
    shifted_arr = images(8, seed=1, shift=60)
    shifted = compute_metrics(ImageSet.from_array(shifted_arr, "shifted"), ref, opts)
    direct = _direct(ImageSet.from_array(shifted_arr), ImageSet.from_array(ref_arr), feature_extractor="inception-v3-compat",
                     feature_extractor_weights_path=str(inception), kid_subset_size=4, kid_subsets=20, isc_splits=8,
                     batch_size=32)
    for ours, theirs in KEYS.items():
        assert shifted[ours] == pytest.approx(direct[theirs], rel=1e-6, abs=1e-9), ours
    assert abs(same["fid"]) < 1e-2 and abs(same["kid"]) < 1e-2
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    assert shifted["fid"] > 1.0 and shifted["fid"] > 100 * abs(same["fid"])
    assert shifted["kid"] > same["kid"]
    # the reference's features were cached once, under its content hash
    cached = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert cached and all(n.startswith(f"flexcli-ref-{ref.content_hash()[:20]}-inception-") for n in cached)


def test_registered_extractor_equals_direct_call_and_caches(tmp_path):
    name = register_tiny()
    spec = feature_spec(name)
    assert not spec.needs_inception_weights and spec.fidelity_name == "flexcli-tiny-test"
    ref_arr, s_arr = images(12, seed=3), images(12, seed=4, shift=30)
    opts = MetricOptions(features=name, kid_subset_size=6, kid_subsets=10, cache_dir=tmp_path)
    ours = compute_metrics(ImageSet.from_array(s_arr), ImageSet.from_array(ref_arr), opts)
    direct = _direct(ImageSet.from_array(s_arr), ImageSet.from_array(ref_arr), feature_extractor="flexcli-tiny-test",
                     kid_subset_size=6, kid_subsets=10, isc_splits=10, batch_size=32)
    for k, theirs in KEYS.items():
        assert ours[k] == pytest.approx(direct[theirs], rel=1e-6, abs=1e-9), k
    assert ours["fid"] > 0.1 and 1 <= ours["isc"]
    again = compute_metrics(ImageSet.from_array(s_arr), ImageSet.from_array(ref_arr.copy()), opts)  # cache hit
    assert again == ours
    assert any("-tiny-test-" in p.name for p in tmp_path.iterdir())
    same = compute_metrics(ImageSet.from_array(ref_arr), ImageSet.from_array(ref_arr), opts)
    assert abs(same["fid"]) < 1e-6


def test_kwargs_are_offline_and_explicit(tmp_path):
    w = tmp_path / "w.pth"
    w.write_bytes(b"x")
    kw = fidelity_kwargs(MetricOptions(inception_weights=w), feature_spec("inception"), 5)
    assert kw["cuda"] is False and kw["save_cpu_ram"] is True and kw["feature_extractor"] == "inception-v3-compat"
    assert kw["feature_extractor_weights_path"] == str(w) and kw["isc_splits"] == 5
    assert all(kw[m] for m in ("fid", "isc", "kid", "prc"))


def test_option_errors(tmp_path):
    ref = ImageSet.from_array(images(6))
    with pytest.raises(FlexcliError, match="--inception-weights.*weights-inception-2015-12-05-6726825d.pth"):
        compute_metrics(ref, ref, MetricOptions())
    with pytest.raises(FlexcliError, match="not found"):
        compute_metrics(ref, ref, MetricOptions(inception_weights=tmp_path / "missing.pth"))
    (tmp_path / "garbage.pth").write_text("not a checkpoint")
    with pytest.raises(FlexcliError, match="not a readable PyTorch file"):
        compute_metrics(ref, ref, MetricOptions(inception_weights=tmp_path / "garbage.pth"))
    torch.save({"fc.weight": torch.zeros(10, 2048)}, tmp_path / "other.pth")
    with pytest.raises(FlexcliError, match="not torch-fidelity's InceptionV3 state dict"):
        compute_metrics(ref, ref, MetricOptions(inception_weights=tmp_path / "other.pth"))
    with pytest.raises(FlexcliError, match="below the KID subset size 1000.*--kid-subset-size 6"):
        compute_metrics(ref, ref, MetricOptions(features=register_tiny()))
    with pytest.raises(FlexcliError, match="unknown feature extractor 'nope'.*inception"):
        compute_metrics(ref, ref, MetricOptions(features="nope"))
    with pytest.raises(FlexcliError, match="16x16 but the reference .* 8x8"):
        compute_metrics(ref, ImageSet.from_array(images(6, size=8)), MetricOptions(features="tiny-test", kid_subset_size=2))
    with pytest.raises(TypeError):
        from flexcli.metrics.fid import register_features
        register_features("bad", object)


def test_image_sources_grayscale_npz_and_hash(tmp_path):
    rgb = images(5, seed=7)
    gray = rgb[..., 0]
    folder = tmp_path / "gray"
    folder.mkdir()
    for i, g in enumerate(gray):
        Image.fromarray(g, mode="L").save(folder / f"{i:03d}.png")
    np.savez(tmp_path / "gray.npz", arr_0=gray)
    np.savez(tmp_path / "gray1.npz", arr_0=gray[..., None])
    np.savez_compressed(tmp_path / "rgb_compressed.npz", arr_0=rgb)
    np.savez(tmp_path / "rgb.npz", arr_0=rgb)
    sets = [open_images(p) for p in (folder, tmp_path / "gray.npz", tmp_path / "gray1.npz")]
    for s in sets:
        assert len(s) == 5 and s.size == (16, 16)
        x = s[2]
        assert x.dtype == torch.uint8 and x.shape == (3, 16, 16)
        assert torch.equal(x[0], torch.from_numpy(gray[2])) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    a, b = open_images(tmp_path / "rgb.npz"), open_images(tmp_path / "rgb_compressed.npz")
    assert isinstance(a.array, np.memmap) and not isinstance(b.array, np.memmap)  # np.savez files are mapped
    assert all(torch.equal(a[i], b[i]) for i in range(5))
    assert torch.equal(a[0], torch.from_numpy(rgb[0]).permute(2, 0, 1))
    # content hash: same pixels -> same hash; one changed pixel -> a new hash
    np.savez(tmp_path / "copy.npz", arr_0=rgb)
    assert open_images(tmp_path / "copy.npz").content_hash() == a.content_hash()
    rgb2 = rgb.copy()
    rgb2[0, 0, 0, 0] ^= 1
    np.savez(tmp_path / "changed.npz", arr_0=rgb2)
    assert open_images(tmp_path / "changed.npz").content_hash() != a.content_hash()


def test_image_source_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlexcliError, match="holds no .png/.jpg images"):
        open_images(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(images(1)[0]).save(mixed / "a.png")
    Image.fromarray(images(1, size=8)[0]).save(mixed / "b.png")
    with pytest.raises(FlexcliError, match="mixes image sizes"):
        open_images(mixed)
    np.savez(tmp_path / "f.npz", arr_0=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(FlexcliError, match="not uint8 images"):
        open_images(tmp_path / "f.npz")
    np.savez(tmp_path / "k.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(FlexcliError, match="no 'arr_0' array .*images"):
        open_images(tmp_path / "k.npz")


# ---------------------------------------------------------------------------------------------------
def test_clip_score_matches_open_clip(tiny_clip):
    import open_clip

    from flexcli.metrics.clip import clip_score

    name, w = tiny_clip
    arr = images(3, size=32, seed=5)
    prompts = ["a red square", "a blue dog", "a photo of the sea"]
    ours = clip_score(ImageSet.from_array(arr), prompts, name, w)
    model, _, pre = open_clip.create_model_and_transforms(name, pretrained=str(w))
    model.eval()
    with torch.no_grad():
        im = model.encode_image(torch.stack([pre(Image.fromarray(a)) for a in arr]))
        tx = model.encode_text(open_clip.get_tokenizer(name)(prompts))
        cos = torch.nn.functional.cosine_similarity(im, tx)
    assert ours == pytest.approx(float((100 * cos.clamp(min=0)).mean()), rel=1e-5)
    assert 0 <= ours <= 100 and not math.isnan(ours)
    with pytest.raises(FlexcliError, match="2 prompts for 3 samples"):
        clip_score(ImageSet.from_array(arr), prompts[:2], name, w)
    with pytest.raises(FlexcliError, match="--clip-weights"):
        clip_score(ImageSet.from_array(arr), prompts, name, None)
    with pytest.raises(FlexcliError, match="unknown open_clip model"):
        clip_score(ImageSet.from_array(arr), prompts, "No-Such-Model", w)
