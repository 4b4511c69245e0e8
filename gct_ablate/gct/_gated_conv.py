"""A convolution preceded by its attention module, with the ``recompute`` memory saver."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gct_ablate.gct import _fused
from gct_ablate.gct._gct import GCT


class GatedConv(nn.Module):
    """``conv(attn(x))``; with ``attn.recompute`` the gated input is recomputed in backward.

    By default the conv stores its input ``x * gate`` for backward, as any conv does (before
    a strided 1x1 conv, such as a downsampling projection, only the pixels it reads). With
    ``attn.recompute`` only x (and (B, C) statistics) are kept: a fused GCT + conv2d
    autograd function for a fused GCT before a plain ``nn.Conv2d`` outside autocast (the
    cost is one broadcast multiply per conv in backward), else non-reentrant activation
    checkpointing of the pair (the cost is a second forward of both).
    """

    def __init__(self, attn: nn.Module, conv: nn.Module) -> None:
        super().__init__()
        self.attn = attn
        self.conv = conv

    def _run(self, x: Tensor) -> Tensor:
        conv = self.conv
        if not self._strided_pointwise():
            return conv(self.attn(x))
        # A strided 1x1 conv reads every s-th pixel only: keep (and store) just those.
        y = self.attn(x)[:, :, ::conv.stride[0], ::conv.stride[1]]
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous() else torch.contiguous_format
        return F.conv2d(y.contiguous(memory_format=fmt), conv.weight, conv.bias, 1, 0, 1,
                        conv.groups)

    def _strided_pointwise(self) -> bool:
        conv = self.conv
        return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1)
                and conv.padding == (0, 0) and conv.stride != (1, 1))

    def _fusable(self, x: Tensor) -> bool:
        attn, conv = self.attn, self.conv
        return (isinstance(attn, GCT) and attn.fused and type(conv) is nn.Conv2d
                and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
                and not torch.is_autocast_enabled(x.device.type))

    def forward(self, x: Tensor) -> Tensor:
        if not (getattr(self.attn, "recompute", False) and torch.is_grad_enabled()) \
                or torch.compiler.is_compiling():  # compiled: its partitioner picks what to keep
            return self._run(x)
        if self._fusable(x):
            a, c = self.attn, self.conv
            return _fused.gated_conv(x, a.alpha, a.gamma, a.beta, a.config, c.weight, c.bias,
                                         c.stride, c.padding, c.dilation, c.groups)
        return checkpoint(self._run, x, use_reentrant=False)
