"""What each sample is conditioned on, and the null conditioning that classifier-free guidance contrasts it
with. A family's model takes a batch of these as its `cond` argument; `model.cat_conditions` stacks them."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from flexcli.errors import FlexcliError


@dataclass
class ClassLabels:
    """Class-conditional models (DiT): one label per sample; the null class is `num_classes`."""

    labels: list[int]
    null_class: int

    def batch(self, indices: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(conditional labels, null labels) of these samples, (N,) each."""
        y = torch.tensor([self.labels[i] for i in indices], dtype=torch.long, device=device)
        return y, torch.full_like(y, self.null_class)

    def record(self) -> dict:
        return {"labels": self.labels}


def class_labels(model, num_samples: int, given: list[int] | None, seed: int, guided: bool) -> ClassLabels:
    """Labels cycled from `given`, or drawn from the seed; checked against the model's classes."""
    mc = model.config
    if guided and model.y_embedder.embedding_table.num_embeddings <= mc.num_classes:
        raise FlexcliError("the checkpoint has no null class, so it cannot do classifier-free guidance",
                           "pass --cfg-scale 1")
    if given is not None:
        bad = [y for y in given if not 0 <= y < mc.num_classes]
        if bad:
            raise FlexcliError(f"class label {bad[0]} is out of range for {mc.num_classes} classes",
                               f"use labels in 0..{mc.num_classes - 1}")
        return ClassLabels([given[i % len(given)] for i in range(num_samples)], mc.num_classes)
    g = torch.Generator().manual_seed(seed)
    return ClassLabels(torch.randint(0, mc.num_classes, (num_samples,), generator=g).tolist(), mc.num_classes)
