"""Training data for `flexcli distill`: named sets (flexcli.registry), latent shards and VAE-encoded image folders."""
from flexcli.data.datasets import TensorData, load_training_data

__all__ = ["TensorData", "load_training_data"]
