"""Reproducible random draws for the Monte-Carlo estimate of the diffusion loss.

Everything is drawn on the CPU from one seeded generator, then moved to the model's
device, so a seed gives the same pixels on every device.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .interface import DiffusionModel, Latent


def flow_sigma(t: Tensor, shift: float) -> Tensor:
    """Rectified-flow timestep shift used in training (SD3, Flux): t -> shifted sigma."""
    return shift * t / (1 + (shift - 1) * t)


class Draws:
    def __init__(self, model: DiffusionModel, seed: int, t_min: float = 0.0, t_max: float = 1.0):
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"timestep range must satisfy 0 <= min < max <= 1, got {t_min}..{t_max}")
        self.model = model
        self.generator = torch.Generator().manual_seed(int(seed))
        self.t_min, self.t_max = t_min, t_max

    def _to_device(self, x: Tensor) -> Tensor:
        return x.to(self.model.device)

    def timesteps(self, k: int) -> Tensor:
        """k training timesteps: integer indices (discrete models) or t in (0, 1) (flow)."""
        m = self.model
        if m.prediction == "flow":
            if m.flow_logit_normal:
                t = torch.sigmoid(torch.randn(k, generator=self.generator))
                t = self.t_min + (self.t_max - self.t_min) * t
            else:
                t = self.t_min + (self.t_max - self.t_min) * torch.rand(k, generator=self.generator)
            return t.clamp(1e-3, 1 - 1e-3)
        n = len(m.sigmas)
        lo = min(int(round(self.t_min * n)), n - 1)
        hi = max(lo + 1, int(round(self.t_max * n)))
        return torch.randint(lo, hi, (k,), generator=self.generator)

    def sigmas(self, k: int) -> Tensor:
        return self._to_device(sigma_at(self.model, self.timesteps(k)))

    def normal(self, shape) -> Tensor:
        return self._to_device(torch.randn(tuple(shape), generator=self.generator))

    def uniform(self, shape, low: float, high: float) -> Tensor:
        u = torch.rand(tuple(shape), generator=self.generator)
        return self._to_device(low + (high - low) * u)


def sigma_at(model: DiffusionModel, timesteps: Tensor) -> Tensor:
    """Noise level for training timesteps: sigmas[t] (discrete) or the shifted t (flow)."""
    if model.prediction == "flow":
        return flow_sigma(timesteps.float().cpu(), model.flow_shift)
    return model.sigmas[timesteps.long().cpu()]


def posterior_sample(latent: Latent, draws: Draws) -> Tensor:
    """z = s * E(x), a reparameterised posterior sample as in the official AdvDM code."""
    if latent.std is None:
        return latent.mean
    return latent.sample(draws.normal(latent.mean.shape).to(latent.mean.dtype))
