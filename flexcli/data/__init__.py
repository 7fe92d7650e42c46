"""Training data for `flexcli distill`: the built-in Fashion-MNIST set, latent shards and VAE-encoded image folders."""
from flexcli.data.datasets import (FASHION_MNIST_DIR, TensorData, fashion_mnist, load_training_data, to_model_size)

__all__ = ["FASHION_MNIST_DIR", "TensorData", "fashion_mnist", "load_training_data", "to_model_size"]
