"""flexcli: flexible-patch Diffusion Transformers (FlexiDiT)."""
__version__ = "0.1.0"


def load_model(path, **kwargs):
    """Load a DiT or FlexiDiT checkpoint; see `flexcli.api.load_model`."""
    from flexcli.api import load_model as _load

    return _load(path, **kwargs)
