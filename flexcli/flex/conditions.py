"""What a family's `cond` argument holds besides class labels: text, for the text-to-image and video families."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TextCondition:
    """Text conditioning of a batch: token embeddings (N, L, C) and their key mask (N, L), 1 = keep, 0 = padding."""

    embeds: torch.Tensor
    mask: torch.Tensor

    @staticmethod
    def cat(conds: list["TextCondition"]) -> "TextCondition":
        """Stack along the batch (padding the token axis to the longest)."""
        L = max(c.embeds.shape[1] for c in conds)
        pad = [(F.pad(c.embeds, (0, 0, 0, L - c.embeds.shape[1])), F.pad(c.mask, (0, L - c.mask.shape[1])))
               for c in conds]
        return TextCondition(torch.cat([e for e, _ in pad]), torch.cat([m for _, m in pad]))

    def to(self, device) -> "TextCondition":
        return TextCondition(self.embeds.to(device), self.mask.to(device))

    def __len__(self) -> int:
        return self.embeds.shape[0]
