"""Image sets for the metrics: a folder of images or an ADM-style .npz (arr_0: uint8 NHWC), read lazily.

Items are what torch-fidelity expects: uint8 tensors [3, H, W]. Grayscale images are replicated to 3 channels
(Inception and CLIP are RGB models) and an alpha channel is dropped.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from flexcli.errors import FlexcliError

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
HASH_VERSION = "images-v1"  # bump when the way pixels are read changes, so cached reference features are redone


def _to_chw3(a: np.ndarray) -> torch.Tensor:
    """HW, HW1, HW3 or HW4 uint8 -> [3, H, W] uint8 tensor."""
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        a = a[:, :, :3]
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def _npz_array(path: Path, key: str = "arr_0") -> np.ndarray:
    """The array `key` of an .npz: memory-mapped when stored uncompressed (np.savez), else loaded."""
    try:
        with zipfile.ZipFile(path) as zf:
            name = f"{key}.npy"
            if name not in zf.namelist():
                keys = ", ".join(n[:-4] for n in zf.namelist() if n.endswith(".npy")) or "none"
                raise FlexcliError(f"{path} has no '{key}' array (it has: {keys})",
                                   "pass an ADM-style .npz whose arr_0 holds uint8 NHWC images")
            info = zf.getinfo(name)
            if info.compress_type == zipfile.ZIP_STORED:
                with open(path, "rb") as f:
                    f.seek(info.header_offset)
                    local = f.read(30)
                    start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + \
                        int.from_bytes(local[28:30], "little")
                    f.seek(start)
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, fortran, dtype = read(f)
                    offset = f.tell()
                if not fortran and not dtype.hasobject:
                    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset)
        with np.load(path, allow_pickle=False) as z:
            return z[key]
    except FlexcliError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise FlexcliError(f"{path} is not a readable .npz ({e})", "pass a complete file written by np.savez") from e


class ImageSet(Dataset):
    """A fixed set of same-sized images; `source` names where it came from (for messages)."""

    def __init__(self, source: str, n: int, size: tuple[int, int], getter, hasher):
        self.source, self.n, self.size = source, n, size
        self._get, self._hasher, self._hash = getter, hasher, None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self._get(i)

    def content_hash(self) -> str:
        """SHA-256 of the pixels' source bytes (file names and contents), memoised."""
        if self._hash is None:
            h = hashlib.sha256(HASH_VERSION.encode())
            self._hasher(h)
            self._hash = h.hexdigest()
        return self._hash

    @classmethod
    def from_array(cls, arr: np.ndarray, source: str = "array") -> "ImageSet":
        """From a uint8 array NHWC / NHW (kept by reference)."""
        _check_array(arr, source)

        def hasher(h):
            h.update(str(arr.shape).encode())
            for i in range(0, len(arr), 256):
                h.update(np.ascontiguousarray(arr[i:i + 256]).tobytes())
        s = cls(source, len(arr), tuple(arr.shape[1:3]), lambda i: _to_chw3(np.asarray(arr[i])), hasher)
        s.array = arr
        return s


def _check_array(arr: np.ndarray, source: str) -> None:
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[3] not in (1, 3, 4)):
        raise FlexcliError(f"{source} holds a {arr.dtype} array of shape {tuple(arr.shape)}, not uint8 images",
                           "arr_0 must be uint8 N x H x W x C with C = 1, 3 or 4 (ADM layout)")
    if len(arr) == 0:
        raise FlexcliError(f"{source} holds no images", "pass a non-empty image set")


def _file_hasher(files: list[Path], names: bool = True):
    def hasher(h):
        for f in files:
            if names:
                h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return hasher


def open_images(path: str | Path, what: str = "images") -> ImageSet:
    """A folder of .png/.jpg images (not recursive, sorted by name) or an ADM .npz, checked for one image size."""
    from PIL import Image

    path = Path(path)
    if not path.exists():
        raise FlexcliError(f"{what} {path} not found", "check the path")
    if path.is_file():
        if path.suffix != ".npz":
            raise FlexcliError(f"{what} {path} is neither a folder of images nor an .npz",
                               "pass a folder of .png/.jpg files or an ADM-style .npz (arr_0: uint8 NHWC)")
        arr = _npz_array(path)
        _check_array(arr, f"{what} {path}")
        s = ImageSet.from_array(arr, str(path))
        s._hasher = _file_hasher([path], names=False)
        return s
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise FlexcliError(f"{what} folder {path} holds no .png/.jpg images",
                           "point it at a folder of images or an .npz")
    sizes = {}
    for f in files:
        try:
            with Image.open(f) as im:
                sizes.setdefault(im.size[::-1], f)
        except OSError as e:
            raise FlexcliError(f"{f} is not a readable image ({e})", "remove or replace it") from e
    if len(sizes) > 1:
        (s1, f1), (s2, f2) = list(sizes.items())[:2]
        raise FlexcliError(f"{what} folder {path} mixes image sizes ({f1.name} is {s1[0]}x{s1[1]}, "
                           f"{f2.name} is {s2[0]}x{s2[1]})", "resize all images to one size")

    def get(i):
        with Image.open(files[i]) as im:
            return _to_chw3(np.asarray(im.convert("RGB")))
    return ImageSet(str(path), len(files), next(iter(sizes)), get, _file_hasher(files))


def check_same_size(samples: ImageSet, ref: ImageSet) -> None:
    if samples.size != ref.size:
        raise FlexcliError(f"samples {samples.source} are {samples.size[0]}x{samples.size[1]} but the reference "
                           f"{ref.source} is {ref.size[0]}x{ref.size[1]}",
                           "compare at one resolution: resize the reference set to the sample size")
