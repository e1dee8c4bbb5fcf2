"""Mist's target image, generated here: a dense high-contrast texture of strokes.

Mist pulls the latent towards a busy target pattern so that what a model learns from
the protected image is that pattern. Any size; deterministic.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def target_texture(height: int, width: int) -> Tensor:
    """(1, 3, H, W) in [0, 1]: interfering stripes at three angles and colours, at a
    period (about 24 px at 512) that the VAE keeps in its latent."""
    period = max(8.0, max(height, width) / 21.0)
    y = torch.arange(height, dtype=torch.float32).view(-1, 1)
    x = torch.arange(width, dtype=torch.float32).view(1, -1)
    channels = []
    for k, angle in enumerate((0.3, 1.4, 2.5)):
        phase = (x * math.cos(angle) + y * math.sin(angle)) * (2 * math.pi / period)
        stripes = torch.sin(phase + k) * torch.sin(phase * 0.37 + 2 * k)
        channels.append((stripes > 0).float() * 0.9 + 0.05)
    return torch.stack(channels).unsqueeze(0)
