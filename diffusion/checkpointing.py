"""Activation (gradient) checkpointing of the UNet's blocks.

MONAI's ``AutoencoderKL`` offers it (``use_checkpoint``, the autoencoder config's
``gradient_checkpointing``); its ``DiffusionModelUNet`` does not. Here each down, middle
and up block of a UNet is made to run under ``torch.utils.checkpoint`` (non-reentrant)
while it trains with gradients: the backward pass recomputes a block's activations from
its inputs instead of keeping them, trading about one more forward pass for memory.

The block keeps its class's attributes and parameter names (its class is swapped for a
subclass whose ``forward`` wraps the original), so state dicts, ``from_pretrained`` and
MONAI's own ``forward`` (which reads ``upsample_block.resnets``) are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpoint_blocks", "is_checkpointed"]


class _Checkpointed:
    """Mixin placed before a block's class: forward under checkpointing while training."""

    def forward(self, *args, **kwargs):
        if self.training and torch.is_grad_enabled():
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


def checkpoint_blocks(unet: nn.Module) -> nn.Module:
    """Checkpoint every block of a MONAI ``DiffusionModelUNet`` (``down_blocks``,
    ``middle_block``, ``up_blocks``) in place; returns the UNet."""
    blocks = [*unet.down_blocks, unet.middle_block, *unet.up_blocks]
    for block in blocks:
        if not is_checkpointed(block):
            block.__class__ = _checkpointed_class(type(block))
    return unet
