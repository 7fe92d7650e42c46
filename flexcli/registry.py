"""Named parts that the core reaches without importing them: name -> "module:attribute", imported on first use.

The core packages never import flexcli.builtin (the built-in Fashion-MNIST default); they find its parts here:

* FEATURE_EXTRACTORS: `flexcli evaluate --features NAME`. The attribute is a function of no arguments that
  registers the extractor with `flexcli.metrics.fid.register_features`.
* TRAINING_DATA: `flexcli distill --data NAME[:variant]`. The attribute is a function
  `(model_config, variant or None) -> flexcli.data.TensorData`.
* TEXT_TRAINING_DATA: the same for text-conditional models (images or video): `(model, variant or None,
  cache_dir) -> flexcli.data.text_data.TextData`.
"""
from __future__ import annotations

import importlib

FEATURE_EXTRACTORS = {"fmnist": "flexcli.builtin.classifier:register"}
TRAINING_DATA = {"fashion-mnist": "flexcli.builtin.fashion_mnist:training_data"}
TEXT_TRAINING_DATA = {"fashion-mnist-captions": "flexcli.builtin.captions:training_data",
                      "moving-fashion-mnist": "flexcli.builtin.moving_fmnist:training_data"}


def load(target: str):
    """The object that a "module:attribute" string names (the module is imported now)."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)
