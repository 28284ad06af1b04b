"""Activation (gradient) checkpointing of a network's blocks, in place.

A checkpointed block runs under ``torch.utils.checkpoint`` (non-reentrant) whenever
gradients are being recorded: the forward pass keeps only the block's inputs, and the
backward pass recomputes the block's activations from them, one block at a time, instead
of keeping every activation of the network. About one more forward pass per step.

The block keeps its class's attributes and parameter names (its class is swapped for a
subclass whose ``forward`` wraps the original), so state dicts, ``from_pretrained``,
``copy.deepcopy`` (EMA) and the enclosing network's own ``forward`` (MONAI's UNet reads
``upsample_block.resnets``) are unchanged.

MONAI's ``AutoencoderKL(use_checkpoint=True)`` checkpoints its encoder and decoder whole:
the recomputation then holds every decoder activation at once (about 7 GB at 128^3 with
32 channels at full resolution), so x2ct checkpoints their blocks instead. MONAI's
``DiffusionModelUNet`` offers none.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpoint_modules", "is_checkpointed"]


class _Checkpointed:
    """Mixin placed before a block's class: its forward under checkpointing while
    gradients are recorded (training, or a frozen decoder differentiated for a loss)."""

    def forward(self, *args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(super().forward, *args, use_reentrant=False, **kwargs)
        return super().forward(*args, **kwargs)


_SUBCLASSES: dict[type, type] = {}


def _checkpointed_class(cls: type) -> type:
    if cls not in _SUBCLASSES:
        _SUBCLASSES[cls] = type(f"Checkpointed{cls.__name__}", (_Checkpointed, cls),
                                {"__module__": __name__})
    return _SUBCLASSES[cls]


def is_checkpointed(module: nn.Module) -> bool:
    return isinstance(module, _Checkpointed)


def checkpoint_modules(modules: Iterable[nn.Module]) -> None:
    """Make each module run under checkpointing (in place; idempotent)."""
    for m in modules:
        if not is_checkpointed(m):
            m.__class__ = _checkpointed_class(type(m))
