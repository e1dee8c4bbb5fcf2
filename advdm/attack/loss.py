"""The AdvDM loss for given timesteps and noise, for comparison with other implementations."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..models.draws import sigma_at
from ..models.interface import DiffusionModel, diffusion_loss


def advdm_loss(
    model: DiffusionModel,
    image: Tensor,
    timesteps: Tensor,
    noise: Tensor,
    encoder_noise: Optional[Tensor] = None,
) -> Tensor:
    """Mean over the K samples of the model's native training loss on image (1, 3, H, W):

        E || eps_theta(sqrt(abar_t) z + sqrt(1 - abar_t) n, t, c) - n ||^2   (eps models;
        v and flow models use their own target), with z = s * E(x).

    timesteps: (K,) integer indices into the training schedule (eps / v) or t in (0, 1)
    (flow, shifted as in training); noise: (K, C, h, w); encoder_noise: the posterior
    sample's noise (1, C, h, w), or None to use the posterior mean.
    """
    latent = model.encode(image.to(model.device, model.dtype))
    z = latent.sample(encoder_noise.to(latent.mean) if encoder_noise is not None else None)
    sigma = sigma_at(model, timesteps).to(model.device)
    return diffusion_loss(model, z, sigma, noise.to(model.device, z.dtype)).mean()
