import dataclasses
import os

# One CPU instruction set for the whole suite, set before torch loads. tests/pins/ (bit-identical outputs, issue
# #11) were recorded with AVX2 kernels; on a CPU with AVX-512, ATen, MKL and oneDNN pick kernels that round
# differently (DiT-S/2 latents then differ by about 3e-4). With all three capped at AVX2, any x86-64 CPU gives the
# recorded bits. A variable already set wins.
for _name, _isa in (("ATEN_CPU_CAPABILITY", "avx2"), ("MKL_ENABLE_INSTRUCTIONS", "AVX2"),
                    ("ONEDNN_MAX_CPU_ISA", "AVX2")):
    os.environ.setdefault(_name, _isa)

import pytest  # noqa: E402
import torch  # noqa: E402

from flexcli.models.configs import DiTConfig, named_config  # noqa: E402
from flexcli.models.dit import DiT  # noqa: E402


def random_dit(cfg: DiTConfig | str = "DiT-Tiny/2", seed: int = 0, **overrides) -> DiT:
    """A DiT with every trainable weight random (DiT's own init zeroes adaLN and the final layer)."""
    cfg = named_config(cfg) if isinstance(cfg, str) else cfg
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    torch.manual_seed(seed)
    model = DiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    return model.eval()


def inputs(cfg: DiTConfig, n: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.randint(0, cfg.num_classes + 1, (n,), generator=g)  # includes the null class
    return x, t, y


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests, then restored: tiny models and training on 2 shared cores run much
    faster so (two threads oversubscribe under load), and the pinned outputs were recorded with one. Modules opt
    in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny():
    return random_dit("DiT-Tiny/2")
