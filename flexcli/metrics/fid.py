"""FID, IS, KID, precision and recall through torch_fidelity.calculate_metrics, offline.

- InceptionV3 weights come from a local file (torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`).
- Precision/recall use the same extractor as FID (torch-fidelity's default would download VGG16).
- A project feature extractor plugs in with `register_features(name, cls)` and is picked by name
  (`flexcli evaluate --features NAME`).
- Reference features are cached under the cache folder, keyed by the reference's content hash and the
  extractor's weights, so a sweep extracts them once.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from flexcli import registry
from flexcli.errors import FlexcliError
from flexcli.metrics.images import ImageSet, check_same_size

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
ALL_METRICS = ("fid", "isc", "kid", "prc")


@dataclass(frozen=True)
class FeatureSpec:
    """A feature extractor flexcli can use: its torch-fidelity name, the metrics it supports, its identity."""

    name: str
    fidelity_name: str
    metrics: tuple[str, ...]
    needs_inception_weights: bool = False
    fingerprint: str = ""  # identifies the extractor's weights in cache keys (e.g. a checkpoint hash)
    description: str = ""
    # (images: ImageSet, labels: list[int]) -> the share of images its classifier assigns to their label
    class_accuracy: Callable | None = None


_REGISTRY: dict[str, FeatureSpec] = {
    "inception": FeatureSpec("inception", "inception-v3-compat", ALL_METRICS, True, "",
                             "InceptionV3, TF-compatible (torch-fidelity); weights from --inception-weights"),
}


def register_features(name: str, cls, *, metrics: tuple[str, ...] = ("fid", "kid", "prc"), fingerprint: str = "",
                      description: str = "", replace: bool = False,
                      class_accuracy: Callable | None = None) -> FeatureSpec:
    """Make a torch-fidelity `FeatureExtractorBase` subclass selectable as `--features NAME`.

    `cls(name, features_list, **kwargs)` must provide default feature layers for the listed metrics ("isc" needs
    logits). `fingerprint` must change whenever the extractor's weights change (it keys the reference cache).
    `class_accuracy(images, labels)`, when the extractor is a classifier of the samples' classes, gives
    evaluate its `class_accuracy` column (for runs whose run.json records the labels).
    """
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if not (isinstance(cls, type) and issubclass(cls, FeatureExtractorBase)):
        raise TypeError("a feature extractor must subclass torch_fidelity.feature_extractor_base.FeatureExtractorBase")
    if name in _REGISTRY and not replace:
        raise ValueError(f"feature extractor '{name}' is already registered (pass replace=True)")
    bad = set(metrics) - set(ALL_METRICS)
    if bad:
        raise ValueError(f"unknown metrics {sorted(bad)}; choose from {ALL_METRICS}")
    fidelity_name = f"flexcli-{name}"
    FEATURE_EXTRACTORS_REGISTRY[fidelity_name] = cls  # register_feature_extractor refuses re-registration
    spec = FeatureSpec(name, fidelity_name, tuple(metrics), False, fingerprint, description, class_accuracy)
    _REGISTRY[name] = spec
    return spec


def feature_spec(name: str) -> FeatureSpec:
    """The extractor called `name`; one that flexcli.registry names registers itself on first use."""
    if name not in _REGISTRY and name in registry.FEATURE_EXTRACTORS:
        registry.load(registry.FEATURE_EXTRACTORS[name])()
    if name not in _REGISTRY:
        choices = sorted(set(_REGISTRY) | set(registry.FEATURE_EXTRACTORS))
        raise FlexcliError(f"unknown feature extractor '{name}'", f"choose one of: {', '.join(choices)}")
    return _REGISTRY[name]


def available_features() -> dict[str, str]:
    return {k: v.description for k, v in _REGISTRY.items()}


@dataclass
class MetricOptions:
    features: str = "inception"
    inception_weights: Path | None = None
    metrics: tuple[str, ...] = ALL_METRICS
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    prc_neighborhood: int = 3
    batch_size: int = 32
    cache_dir: Path | None = None
    extra: dict = field(default_factory=dict)  # passed to calculate_metrics as is


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "flexcli" / "fidelity"


_WEIGHT_HASHES: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _WEIGHT_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _WEIGHT_HASHES[key] = h.hexdigest()
    return _WEIGHT_HASHES[key]


_CHECKED: set[tuple] = set()


def _check_inception_file(path: Path) -> None:
    """A state dict with torch-fidelity's InceptionV3 head (fc: 2048 -> 1008), checked once per file version."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _CHECKED:
        return
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read it is the same user error
        raise FlexcliError(f"--inception-weights {path} is not a readable PyTorch file ({type(e).__name__})",
                           f"pass torch-fidelity's {INCEPTION_FILE}") from e
    fc = sd.get("fc.weight") if isinstance(sd, dict) else None
    if fc is None or tuple(fc.shape) != (1008, 2048) or "Mixed_7c.branch_pool.conv.weight" not in sd:
        raise FlexcliError(f"--inception-weights {path} is not torch-fidelity's InceptionV3 state dict",
                           f"pass torch-fidelity's {INCEPTION_FILE}")
    _CHECKED.add(key)


def check_options(opts: MetricOptions, n_samples: int, n_ref: int) -> FeatureSpec:
    """Every check that needs no features: extractor, weights file, sample counts. Run before any work."""
    spec = feature_spec(opts.features)
    if spec.needs_inception_weights:
        w = opts.inception_weights
        if w is None:
            raise FlexcliError("no InceptionV3 weights given (nothing is downloaded)",
                               f"pass --inception-weights PATH to torch-fidelity's {INCEPTION_FILE}")
        if not Path(w).is_file():
            raise FlexcliError(f"--inception-weights {w} not found",
                               f"pass the path of torch-fidelity's {INCEPTION_FILE}")
        _check_inception_file(Path(w))
    unsupported = [m for m in opts.metrics if m not in spec.metrics]
    if unsupported and opts.metrics != ALL_METRICS:
        raise FlexcliError(f"feature extractor '{spec.name}' does not support {', '.join(unsupported)}",
                           f"it supports {', '.join(spec.metrics)}")
    n = min(n_samples, n_ref)
    if "kid" in opts.metrics and n < opts.kid_subset_size:
        raise FlexcliError(f"{n} images ({n_samples} samples, {n_ref} reference) is below the KID subset size "
                           f"{opts.kid_subset_size}", f"pass --kid-subset-size {n} or fewer, or more samples")
    if "prc" in opts.metrics and n <= opts.prc_neighborhood:
        raise FlexcliError(f"precision/recall need more than {opts.prc_neighborhood} images per set, got {n}",
                           "generate more samples")
    return spec


def fidelity_kwargs(opts: MetricOptions, spec: FeatureSpec, n_samples: int) -> dict:
    """The calculate_metrics keyword arguments flexcli uses (CPU, offline, explicit extractor)."""
    use = [m for m in opts.metrics if m in spec.metrics]
    kw = dict(cuda=False, verbose=False, save_cpu_ram=True, batch_size=opts.batch_size,
              feature_extractor=spec.fidelity_name, kid_subset_size=opts.kid_subset_size,
              kid_subsets=opts.kid_subsets, prc_neighborhood=opts.prc_neighborhood,
              isc_splits=max(1, min(10, n_samples)), **{m: (m in use) for m in ALL_METRICS})
    if spec.needs_inception_weights:
        kw["feature_extractor_weights_path"] = str(opts.inception_weights)
    kw.update(opts.extra)
    return kw


def ref_cache_name(ref: ImageSet, opts: MetricOptions, spec: FeatureSpec) -> str:
    ident = spec.fingerprint
    if spec.needs_inception_weights:
        ident += file_sha256(Path(opts.inception_weights))
    ident_hash = hashlib.sha256(ident.encode()).hexdigest()[:12]
    return f"flexcli-ref-{ref.content_hash()[:20]}-{spec.name}-{ident_hash}"


def compute_metrics(samples: ImageSet, ref: ImageSet, opts: MetricOptions) -> dict[str, float]:
    """FID/IS/KID/precision/recall of `samples` against `ref` (NaN for metrics the extractor lacks)."""
    import torch_fidelity

    check_same_size(samples, ref)
    spec = check_options(opts, len(samples), len(ref))
    kw = fidelity_kwargs(opts, spec, len(samples))
    cache = Path(opts.cache_dir) if opts.cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    m = torch_fidelity.calculate_metrics(input1=samples, input2=ref, cache=True, cache_root=str(cache),
                                         input2_cache_name=ref_cache_name(ref, opts, spec), **kw)
    nan = math.nan
    return {
        "fid": m.get("frechet_inception_distance", nan),
        "isc": m.get("inception_score_mean", nan), "isc_std": m.get("inception_score_std", nan),
        "kid": m.get("kernel_inception_distance_mean", nan), "kid_std": m.get("kernel_inception_distance_std", nan),
        "precision": m.get("precision", nan), "recall": m.get("recall", nan),
    }


def random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised (Kaiming) InceptionV3 state dict that torch-fidelity loads: for offline tests.

    torch-fidelity's default init gives degenerate features (~1e-7); Kaiming-normal convolutions with
    identity batch norms give usable ones. Not a quality metric: only the code path is real.
    """
    import torch
    from torch import nn
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    class _Skeleton(fe.FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # build the layers without any weights file
            return None

    torch.manual_seed(seed)
    orig = fe.load_state_dict_from_url
    fe.load_state_dict_from_url = lambda *a, **k: {}
    try:
        net = _Skeleton("inception-v3-compat", ["2048"])
    finally:
        fe.load_state_dict_from_url = orig
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
            elif isinstance(mod, nn.Linear):
                nn.init.kaiming_normal_(mod.weight)
                nn.init.zeros_(mod.bias)
    path = Path(path)
    torch.save(net.state_dict(), path)
    return path
