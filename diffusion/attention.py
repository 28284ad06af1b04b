"""Which attention kernel the UNet runs, behind one predicate (STYLE.md 9).

MONAI's attention blocks (``SABlock`` for self-attention, ``CrossAttentionBlock`` for the
X-ray context) are built with ``use_flash_attention=True``, so they call PyTorch's
``scaled_dot_product_attention`` (SDPA; flash or memory-efficient kernels on CUDA, a fused
CPU kernel elsewhere). When xformers is installed, :func:`enable_xformers` swaps each
block's forward for one that calls ``xformers.ops.memory_efficient_attention`` whenever
:func:`use_xformers` holds for the query (a CUDA tensor, xformers importable, not forced
off by ``X2CT_ATTENTION=sdpa``) and SDPA otherwise. Each backend announces itself once
in the log (``x2ct.diffusion: attention ...``).
"""

from __future__ import annotations

import importlib
import logging
import os
import types

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ATTENTION_ENV", "attention_backend", "enable_xformers", "use_xformers", "xformers_ops"]

logger = logging.getLogger("x2ct.diffusion")

ATTENTION_ENV = "X2CT_ATTENTION"
"""``sdpa`` forces PyTorch's SDPA even where xformers could run."""

_announced: set[tuple[str, str]] = set()


def xformers_ops():
    """``xformers.ops`` or None when xformers is not installed (or fails to import)."""
    try:
        return importlib.import_module("xformers.ops")
    except Exception:  # ImportError, or a broken build raising anything on import
        return None


def use_xformers(x: torch.Tensor) -> bool:
    """The one predicate: xformers' memory-efficient attention for this query tensor."""
    if os.environ.get(ATTENTION_ENV, "").strip().lower() == "sdpa":
        return False
    return x.is_cuda and xformers_ops() is not None


def attention_backend(x: torch.Tensor) -> str:
    """``"xformers"`` or ``"sdpa"``: what an attention block runs for query ``x``."""
    return "xformers" if use_xformers(x) else "sdpa"


def announce(backend: str, device: torch.device) -> None:
    key = (backend, device.type)
    if key not in _announced:
        _announced.add(key)
        name = {
            "xformers": "xformers memory_efficient_attention",
            "sdpa": "torch scaled_dot_product_attention",
        }[backend]
        logger.info("x2ct.diffusion: attention runs %s on %s", name, device.type)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout: float):
    """q (B, heads, Lq, d), k/v (B, heads, Lk, d) -> (B, heads, Lq, d)."""
    backend = attention_backend(q)
    announce(backend, q.device)
    if backend == "xformers":
        ops = xformers_ops()
        # xformers takes (B, L, heads, d)
        out = ops.memory_efficient_attention(
            q.transpose(1, 2).contiguous(),
            k.transpose(1, 2).contiguous(),
            v.transpose(1, 2).contiguous(),
            p=dropout,
            scale=scale,
        )
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scale)


def _self_attention_forward(self, x: torch.Tensor, attn_mask=None) -> torch.Tensor:
    """MONAI ``SABlock.forward`` (x: (B, L, C)) with the kernel chosen by :func:`_attend`."""
    if attn_mask is not None or self.causal or self.rel_positional_embedding is not None:
        return type(self).forward(self, x, attn_mask)
    if self.use_combined_linear:
        q, k, v = self.input_rearrange(self.qkv(x))
    else:
        q = self.input_rearrange(self.to_q(x))  # (B, heads, L, d)
        k = self.input_rearrange(self.to_k(x))
        v = self.input_rearrange(self.to_v(x))
    if self.attention_dtype is not None:
        q, k = q.to(self.attention_dtype), k.to(self.attention_dtype)
    dropout = self.dropout_rate if self.training else 0.0
    out = _attend(q, k, v, self.scale, dropout)
    return self.drop_output(self.out_proj(self.out_rearrange(out)))


def _cross_attention_forward(self, x: torch.Tensor, context=None) -> torch.Tensor:
    """MONAI ``CrossAttentionBlock.forward`` (x (B, L, C), context (B, T, D))."""
    if self.causal or self.rel_positional_embedding is not None:
        return type(self).forward(self, x, context)
    kv = x if context is None else context
    q = self.input_rearrange(self.to_q(x))  # (B, heads, L, d)
    k = self.input_rearrange(self.to_k(kv))  # (B, heads, T, d)
    v = self.input_rearrange(self.to_v(kv))
    if self.attention_dtype is not None:
        q, k = q.to(self.attention_dtype), k.to(self.attention_dtype)
    dropout = self.dropout_rate if self.training else 0.0
    out = _attend(q, k, v, self.scale, dropout)
    return self.drop_output(self.out_proj(self.out_rearrange(out)))


def enable_xformers(model: nn.Module) -> int:
    """Route every MONAI attention block of ``model`` through :func:`_attend` (xformers on
    CUDA when installed, SDPA otherwise). Returns the number of blocks patched."""
    from monai.networks.blocks import CrossAttentionBlock, SABlock

    n = 0
    for module in model.modules():
        if isinstance(module, CrossAttentionBlock):
            module.forward = types.MethodType(_cross_attention_forward, module)
            n += 1
        elif isinstance(module, SABlock):
            module.forward = types.MethodType(_self_attention_forward, module)
            n += 1
    return n
