"""Squeeze-and-Excitation (Hu et al., CVPR 2018), the channel-attention baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gct_ablate.gct._checks import _check_channels


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation (Hu et al., CVPR 2018): y = x * sigmoid(W2 relu(W1 GAP(x)))."""

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 4) -> None:
        super().__init__()
        self.channels = _check_channels(channels)
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"invalid reduction {reduction!r}; expected a positive int")
        hidden = max(min_hidden, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.recompute = False

    def gate(self, x: Tensor) -> Tensor:
        """The gate (B, C, 1, 1)."""
        s = x.mean(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(s))))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)
