"""flexcli: flexible-patch Diffusion Transformers (FlexiDiT)."""
from flexcli.version import __version__


def load_model(path, **kwargs):
    """Load a DiT or FlexiDiT checkpoint; see `flexcli.api.load_model`."""
    from flexcli.api import load_model as _load

    return _load(path, **kwargs)


__all__ = ["__version__", "load_model"]
