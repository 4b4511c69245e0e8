"""Exact removal of GCT modules: a module's constant part folded into its neighbour.

With gamma_c = 0 a GCT's gate on channel c no longer depends on its input: the normalized
term is 0 under every norm, so ``gate_c = g(beta_c)`` (1 + tanh(beta_c) for the paper's gate;
the module's own activation in general, :func:`constant_gate`). The module is then a fixed
per-channel scale ``k``, which a neighbour absorbs exactly:

- before a conv (every-conv, block, stages=, every=K: ``GatedConv``): a conv is linear in
  its input, so scaling input channel c by ``k_c`` is scaling the weight's input-channel
  slice ``W[:, c]`` by ``k_c`` (with groups, along each group's own input channels); zero
  padding pads zeros either way;
- after a block's last BN (after-block: ``AfterBN``): BN's affine output times ``k_c`` is the
  BN with weight and bias times ``k_c``, in train and eval mode alike.

``identity`` removal (``nn.Identity`` in the module's place) drops the constant too; ``fold``
keeps it. For gamma != 0, fold keeps only the constant part (what that costs is what a fold
prune curve measures). A module with neither neighbour falls back to identity
(:func:`unfoldable` names them).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gct_ablate.gct import GCT, GatedConv, gct_gate
from gct_ablate.models import AfterBN, AttentionSite, Wrapped, unwrap, wrapper_of

MODES = ("identity", "fold")


def constant_gate(module: GCT) -> Tensor:
    """The gate with gamma = 0, per channel (C,): ``g(beta)`` by the module's own activation."""
    x = torch.ones(1, module.channels, 1, 1, device=module.beta.device)
    with torch.no_grad():
        gate = gct_gate(x, module.alpha, torch.zeros_like(module.gamma), module.beta,
                        **module.config._asdict())
    return gate.flatten()


def _foldable(found: Wrapped | None) -> bool:
    if found is None:
        return False
    if isinstance(found.wrapper, GatedConv):
        return isinstance(found.plain, nn.Conv2d)
    return isinstance(found.wrapper, AfterBN) and isinstance(found.plain, nn.BatchNorm2d) \
        and found.plain.affine


def folded(found: Wrapped, k: Tensor) -> nn.Module:
    """A copy of the wrapper's plain module with the channel scale ``k`` folded in."""
    plain = copy.deepcopy(found.plain)
    with torch.no_grad():
        if isinstance(plain, nn.Conv2d):
            w = plain.weight  # (out, in / groups, kh, kw)
            out, per = w.shape[:2]
            scale = k.to(w.dtype).view(plain.groups, per).repeat_interleave(
                out // plain.groups, dim=0)  # (out, in / groups): each out's own group
            w.mul_(scale[:, :, None, None])
        else:
            plain.weight.mul_(k.to(plain.weight.dtype))
            plain.bias.mul_(k.to(plain.bias.dtype))
    return plain


@dataclass(frozen=True)
class Swap:
    """``setattr(parent, attr, new)`` removes one module; ``old`` puts it back."""

    parent: nn.Module
    attr: str
    new: nn.Module
    old: nn.Module
    folded: bool  # False for identity removal (and fold's identity fallback)


def removal(model: nn.Module, site: AttentionSite, mode: str = "identity") -> Swap:
    """How to remove one GCT module by ``mode`` (see the module doc)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    found = wrapper_of(model, site.name)
    if mode == "fold" and _foldable(found) and isinstance(site.module, GCT):
        return Swap(found.parent, found.attr, folded(found, constant_gate(site.module)),
                    found.wrapper, True)
    parent_name, _, attr = site.name.rpartition(".")
    return Swap(model.get_submodule(parent_name), attr, nn.Identity(), site.module, False)


def unfoldable(model: nn.Module, sites: Sequence[AttentionSite]) -> list[str]:
    """Names of the modules with no conv after them nor BN before them (fold uses identity)."""
    return [s.name for s in sites if not _foldable(wrapper_of(model, s.name))]


def pruned_copy(model: nn.Module, sites: Sequence[AttentionSite], positions: Sequence[int],
                mode: str = "fold") -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with the modules ``sites[positions]`` gone for good: each wrapper
    replaced by its plain module, folded (``fold``) or not (``identity``). Returns the copy
    and the removed modules' names (what :func:`gct_ablate.models.unwrap` takes to rebuild
    its structure)."""
    names = [sites[i].name for i in positions]
    out = copy.deepcopy(model)
    if mode == "identity":
        unwrap(out, names)
        return out, names
    fold = set(names) - set(unfoldable(model, [sites[i] for i in positions]))
    for name in names:
        found = wrapper_of(out, name)
        if found is None:
            raise ValueError(f"{name!r} has no wrapper to take out")
        module = out.get_submodule(name)
        new = folded(found, constant_gate(module)) if name in fold else found.plain
        setattr(found.parent, found.attr, new)
    return out, names
