"""Device facts and latency measurement for `flexcli profile` (and benchmarks/).

Timing: warm-up calls (which include any torch.compile work) are run and discarded first. On CUDA every
repeat is bracketed by CUDA events and the host waits for the end event; on the CPU, where kernels run
synchronously, by `time.perf_counter`. Results are the median and spread over the repeats.
"""
from __future__ import annotations

import contextlib

import math
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from flexcli.errors import FlexcliError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Dense (no sparsity) tensor-core peaks from NVIDIA's datasheets: (bf16/fp16 TFLOP/s, memory TB/s).
# Matched against torch.cuda.get_device_name(); more specific names first. H200 is the H100 chip with
# more and faster memory. fp32 has no entry: pass --peak-tflops for it.
KNOWN_PEAKS = (
    ("H100 PCIe", 756.0, 2.0),
    ("H100 NVL", 835.0, 3.9),
    ("H200", 989.0, 4.8),
    ("H100", 989.0, 3.35),  # SXM5 ("NVIDIA H100 80GB HBM3")
)


def resolve_device(name: str | None) -> tuple[torch.device, str | None]:
    """The device to profile on, and a notice when it was chosen for the user."""
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda"), None
        return torch.device("cpu"), "no CUDA device found: profiling on the CPU (pass --device to choose)"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise FlexcliError(f"unknown device '{name}'", "use --device cuda, cuda:N or cpu") from e
    if device.type not in ("cuda", "cpu"):
        raise FlexcliError(f"device '{name}' is not supported", "use --device cuda, cuda:N or cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
            raise FlexcliError(f"--device {name} was asked for but CUDA is not available (torch {torch.__version__}, "
                               f"built with {built}, no GPU visible)", "use --device cpu or leave --device out")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FlexcliError(f"there is no {name} (found {torch.cuda.device_count()} CUDA devices)",
                               "use --device cuda or cuda:0")
    return device, None


def parse_dtype(name: str | None, device: torch.device | None) -> str:
    """The dtype name; default bf16 on CUDA (the paper's setting) and without a device, fp32 on the CPU."""
    if name is None:
        return "fp32" if device is not None and device.type == "cpu" else "bf16"
    if name not in DTYPES:
        raise FlexcliError(f"unknown dtype '{name}'", f"use one of: {', '.join(DTYPES)}")
    return name


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def known_peaks(name: str, dtype: str) -> tuple[float, float]:
    """(peak TFLOP/s for `dtype`, memory bandwidth TB/s) of a known GPU; NaN for what is not known."""
    for key, tflops, tbps in KNOWN_PEAKS:
        if key.lower() in name.lower():
            return (tflops if dtype in ("bf16", "fp16") else math.nan), tbps
    return math.nan, math.nan


def attention_backend(device: torch.device, dtype: torch.dtype, tokens: int, heads: int, head_dim: int,
                      batch: int) -> str:
    """The scaled_dot_product_attention kernel torch picks for these shapes, e.g. "flash_attention (cpu)".

    Asks torch's own dispatcher (`torch._fused_sdp_choice`, the function SDPA calls) on a small probe of
    the same dtype, head count and head size; torch.backends decides which kernels are enabled.
    """
    try:
        from torch.nn.attention import SDPBackend

        probe = torch.zeros(batch, heads, min(tokens, 64), head_dim, device=device, dtype=dtype)
        choice = SDPBackend(torch._fused_sdp_choice(probe, probe, probe)).name.lower()
    except Exception:  # a private API: report honestly that it could not be asked
        choice = "unknown"
    return f"{choice} ({device.type})"


@dataclass(frozen=True)
class Timing:
    samples_ms: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    def quantile(self, q: float) -> float:
        s = sorted(self.samples_ms)
        pos = q * (len(s) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    @property
    def std(self) -> float:
        return statistics.stdev(self.samples_ms) if len(self.samples_ms) > 1 else 0.0


def measure(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int,
            before_call: Callable[[], None] | None = None,
            after_warmup: Callable[[], None] | None = None) -> Timing:
    """Time `fn` `repeats` times after `warmup` discarded calls; the device is synchronised around each.

    `before_call` runs before every call, outside the timed region; `after_warmup` once between the two phases.
    """
    before = before_call or (lambda: None)
    for _ in range(warmup):
        before()
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if after_warmup is not None:
        after_warmup()
    samples = []
    if device.type == "cuda":
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            before()
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            before()
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return Timing(tuple(samples))


@contextlib.contextmanager
def measuring(compiled: bool, device_type: str, oom_problem: str, oom_fix: str):
    """Turn the failures of a timed region into one-line FlexcliErrors: out of memory, and (with --compile)
    a torch.compile failure. Other errors of an eager run propagate unchanged."""
    from flexcli.errors import FlexcliError

    try:
        yield
    except torch.OutOfMemoryError as e:
        raise FlexcliError(oom_problem, oom_fix) from e
    except FlexcliError:
        raise
    except Exception as e:
        if not compiled:
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FlexcliError(f"torch.compile(fullgraph=True, mode='reduce-overhead') failed on {device_type}: "
                           f"{type(e).__name__}: {first}",
                           "rerun without --compile (FLEXCLI_DEBUG=1 shows the traceback)") from e


def resolve_peaks(device_name: str, dtype: str, on_cuda: bool, peak_tflops: float | None,
                  peak_bandwidth: float | None, notes: list[str]) -> tuple[float, float]:
    """(peak TFLOP/s, peak TB/s): the user's --peak-* values, else the known ones (CUDA only), else NaN
    with a note saying how to supply them."""
    known_tflops, known_tbps = known_peaks(device_name, dtype) if on_cuda else (math.nan, math.nan)
    tflops, tbps = peak_tflops or known_tflops, peak_bandwidth or known_tbps
    if math.isnan(tflops) or math.isnan(tbps):
        notes.append("no known peak for this device and dtype: pass --peak-tflops and --peak-bandwidth")
    return tflops, tbps

