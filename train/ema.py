"""Exponential moving average of a model's weights.

    theta_ema <- d * theta_ema + (1 - d) * theta,   d_t = min(decay, (1 + t) / (10 + t))

(the warm-up of d keeps early averages from remembering the random initialisation).
Buffers are copied. `state_dict`/`load_state_dict` make it checkpointable with
`x2ct.train.checkpoint.save_checkpoint` (safetensors + JSON, never pickle).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        t = self.num_updates
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average toward `model` (unwrapped, same architecture)."""
        d = self.current_decay()
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach().to(e.dtype), 1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {
            "num_updates": self.num_updates,
            "decay": self.decay,
            "model": self.model.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
        self.model.load_state_dict(state["model"])
