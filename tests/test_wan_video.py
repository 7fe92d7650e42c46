"""Video shapes, the Wan video VAE and video outputs (issue #14)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from flexcli.errors import FlexcliError
from flexcli.io.video import check_video_shape, decode_latents, decoded_frames, frame_grid, load_wan_vae, \
    mp4_available, token_count, write_gif, write_mp4, write_video_outputs

P0, TEMPORAL, SPATIAL = (1, 2, 2), (2, 2, 2), (1, 4, 4)
Z_DIM = 4


def _line(excinfo) -> str:
    line = str(excinfo.value)
    assert line and "\n" not in line
    return line


def test_latent_shapes():
    assert check_video_shape(81, 480, 832, [P0]) == (21, 60, 104)  # Wan 2.1 480p default
    assert check_video_shape(81, 720, 1280, [P0]) == (21, 90, 160)  # 720p
    assert check_video_shape(77, 480, 832, [P0, TEMPORAL]) == (20, 60, 104)
    assert check_video_shape(85, 480, 832, [P0, TEMPORAL]) == (22, 60, 104)
    assert check_video_shape(81, 480, 832, [P0, SPATIAL]) == (21, 60, 104)
    assert check_video_shape(1, 16, 16, [P0]) == (1, 2, 2)
    assert [decoded_frames(n) for n in (1, 20, 21)] == [1, 77, 81]


def test_shape_errors_name_the_nearest_valid_values():
    with pytest.raises(FlexcliError) as e:
        check_video_shape(81, 480, 832, [P0, TEMPORAL])
    assert _line(e) == ("--frames 81 gives 21 latent frames, not a multiple of the temporal patch 2 of (1, 2, 2), "
                        "(2, 2, 2); use --frames 77 or 85")
    with pytest.raises(FlexcliError, match=r"--frames 80 is not 4k\+1 .*; use --frames 77 or 81$"):
        check_video_shape(80, 480, 832, [P0])
    with pytest.raises(FlexcliError, match="use --frames 77 or 85$"):
        check_video_shape(80, 480, 832, [TEMPORAL])
    with pytest.raises(FlexcliError, match="use --frames 5$"):
        check_video_shape(1, 480, 832, [TEMPORAL])
    # 720p with the spatial weak patch: 720 / 8 = 90 latent rows, not a multiple of 4.
    with pytest.raises(FlexcliError) as e:
        check_video_shape(81, 720, 1280, [P0, SPATIAL])
    assert _line(e).startswith("--height 720 is not a multiple of 32") and _line(e).endswith("use --height 704 or 736")
    with pytest.raises(FlexcliError, match="--width 830 is not a multiple of 16 .*; use --width 816 or 832$"):
        check_video_shape(81, 480, 830, [P0])
    with pytest.raises(FlexcliError, match="--height 8 is not a multiple of 16 .*; use --height 16$"):
        check_video_shape(81, 8, 832, [P0])
    for bad in ((0, 480, 832), (81, -16, 832), (81, 480, 0)):
        with pytest.raises(FlexcliError, match="is not a positive number"):
            check_video_shape(*bad, [P0])
    for patches in ([], [(1, 2)], [(0, 2, 2)]):
        with pytest.raises(ValueError, match="patch_sizes"):
            check_video_shape(81, 480, 832, patches)


def test_paper_token_counts():
    """FlexiDiT appendix: a 32 x 88 x 48 latent gives 33792 / 16896 / 8448 tokens at (1,2,2) / (2,2,2) / (1,4,4)."""
    latent = (32, 88, 48)
    assert [token_count(latent, p) for p in (P0, TEMPORAL, SPATIAL)] == [33792, 16896, 8448]
    assert token_count((21, 60, 104), P0) == 32760  # Wan 2.1 480p, 81 frames
    with pytest.raises(ValueError, match="not divisible"):
        token_count((21, 60, 104), TEMPORAL)


# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=Z_DIM, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])
    folder = tmp_path_factory.mktemp("wan") / "vae"
    vae.save_pretrained(folder)
    return folder


def test_decode_matches_the_wan_pipeline(vae_dir):
    """Our decode equals WanPipeline's: z / (1 / latents_std) + latents_mean, vae.decode, VideoProcessor np."""
    from diffusers.video_processor import VideoProcessor

    vae = load_wan_vae(vae_dir)
    latents = torch.randn(2, Z_DIM, 3, 2, 3, generator=torch.Generator().manual_seed(0))
    frames = decode_latents(vae, latents)
    assert frames.shape == (2, 9, 16, 24, 3) and frames.dtype == torch.uint8
    cfg = vae.config
    std = 1.0 / torch.tensor(cfg.latents_std).view(1, Z_DIM, 1, 1, 1)
    mean = torch.tensor(cfg.latents_mean).view(1, Z_DIM, 1, 1, 1)
    with torch.no_grad():
        video = vae.decode(latents / std + mean, return_dict=False)[0]
    expected = VideoProcessor(vae_scale_factor=8).postprocess_video(video, output_type="np")  # (B, F, H, W, 3)
    reference = torch.from_numpy((expected * 255).round().astype(np.uint8))
    assert (frames.int() - reference.int()).abs().max() <= 1  # per-sample vs batched decode: float rounding only
    assert frames.float().std() > 1  # not a constant image
    with pytest.raises(ValueError, match="latents must be"):
        decode_latents(vae, torch.zeros(1, 3, 1, 2, 2))


def test_vae_path_errors_name_the_flag(tmp_path, vae_dir):
    from diffusers import AutoencoderKL

    for path in (None, tmp_path / "missing"):
        with pytest.raises(FlexcliError) as e:
            load_wan_vae(path)
        assert "--vae DIR" in _line(e)
    AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4).save_pretrained(tmp_path / "sd")
    with pytest.raises(FlexcliError, match="holds a AutoencoderKL, not the Wan video VAE") as e:
        load_wan_vae(tmp_path / "sd")
    assert "--vae" in _line(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlexcliError, match="has no config.json"):
        load_wan_vae(tmp_path / "empty")


def test_vae_from_a_pipeline_folder(tmp_path, vae_dir):
    import shutil

    shutil.copytree(vae_dir, tmp_path / "pipe" / "vae")
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    assert load_wan_vae(tmp_path / "pipe").config.z_dim == Z_DIM


# --------------------------------------------------------------------------------------------------
def _frames(n=9, h=16, w=24):
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i, ..., 0], out[i, ..., 1], out[i, ..., 2] = (xx * 10 + 5 * i) % 256, yy * 15, 40 + 20 * i
    return out


def test_gif_round_trip(tmp_path):
    frames = _frames()
    path = write_gif(frames, tmp_path / "a.gif", fps=16)
    with Image.open(path) as im:
        assert (im.n_frames, im.size, im.info["loop"]) == (9, (24, 16), 0)
        back = []
        for k in range(im.n_frames):
            im.seek(k)
            back.append(np.array(im.convert("RGB")))
    assert np.abs(np.stack(back).astype(int) - frames).mean() < 4  # 256-colour palette per frame


@pytest.mark.skipif(not mp4_available(), reason="PyAV is not installed")
def test_mp4_round_trip(tmp_path):
    import av

    frames = _frames()
    path = write_mp4(frames, tmp_path / "a.mp4", fps=16)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 16
        back = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 8  # lossy H.264 with 4:2:0 chroma
    with pytest.raises(ValueError, match="even height and width"):
        write_mp4(frames[:, :15], tmp_path / "odd.mp4")


def test_output_folder(tmp_path):
    videos = torch.from_numpy(np.stack([_frames(), 255 - _frames()]))
    latents = torch.randn(2, Z_DIM, 3, 2, 3)
    written = write_video_outputs(tmp_path, videos, latents, mp4=mp4_available())
    assert [p.name for p in written["gif"]] == ["sample_000000.gif", "sample_000001.gif"]
    assert len(written["mp4"]) == (2 if mp4_available() else 0)
    np.testing.assert_array_equal(np.load(tmp_path / "latents.npz")["arr_0"], latents.numpy())
    grid = np.array(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 + 2 * 18, 2 + 8 * 26, 3)  # 2 rows, 8 of the 9 frames (evenly spaced), 2 px padding
    np.testing.assert_array_equal(grid[2:18, 2:26], videos[0, 0].numpy())
    np.testing.assert_array_equal(grid[20:36, -26:-2], videos[1, -1].numpy())
    assert frame_grid(videos.numpy()[:, :3]).shape == (38, 2 + 3 * 26, 3)
