"""The objectives of AdvDM and its family, each a scalar to *maximise* over the pixels.

An objective is built once per image and called as ``objective(pixels, draws)`` at every
PGD step; targets are encoded once per size, not per step.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..models.draws import Draws, posterior_sample
from ..models.interface import DiffusionModel, Latent, diffusion_loss, loss_weight, network_output, noised
from .texture import target_texture

Objective = Callable[[Tensor, Draws], Tensor]

# Mist weighs the semantic loss 1e4 against a *sum* of squared latent differences at
# 512x512 (4x64x64 latent elements); expressed per element so it holds at any size.
MIST_TEXTURE_WEIGHT = 4 * 64 * 64 / 1e4


def encode(model: DiffusionModel, pixels: Tensor) -> Latent:
    return model.encode(pixels.to(model.device, model.dtype))


def semantic_loss(model: DiffusionModel, z: Tensor, draws: Draws, samples: int) -> Tensor:
    """Monte-Carlo diffusion training loss, all samples batched in one forward."""
    sigma = draws.sigmas(samples)
    noise = draws.normal((samples, *z.shape[1:])).to(z.dtype)
    return diffusion_loss(model, z, sigma, noise).mean()


def advdm(model: DiffusionModel, samples: int = 1) -> Objective:
    def objective(pixels: Tensor, draws: Draws) -> Tensor:
        return semantic_loss(model, posterior_sample(encode(model, pixels), draws), draws, samples)

    return objective


def sds(model: DiffusionModel, samples: int = 1, ascend: bool = False) -> Objective:
    """Score distillation (Xue et al. 2024): the loss gradient with the denoiser's Jacobian
    dropped, so the denoiser runs without autograd and only the encoder is differentiated.
    SDS(-) (their default) descends the loss, SDS(+) ascends it."""
    sign = 1.0 if ascend else -1.0

    def objective(pixels: Tensor, draws: Draws) -> Tensor:
        z = posterior_sample(encode(model, pixels), draws)
        sigma = draws.sigmas(samples)
        noise = draws.normal((samples, *z.shape[1:])).to(z.dtype)
        with torch.no_grad():
            x = noised(model.prediction, z.detach().expand_as(noise), sigma, noise)
            denoised = model.denoise(x, sigma)
            w = loss_weight(model.prediction, sigma).view(-1, 1, 1, 1)
            # d/dz of w * ||D - z||^2 with dD/dz taken as zero
            grad_z = (2 * w * (z.detach() - denoised).float()).mean(0, keepdim=True)
        return sign * (grad_z.to(z.dtype) * z).sum()

    return objective


def target_latents(model: DiffusionModel, make_image: Callable[[int, int], Tensor]) -> Callable[[Tensor], Tensor]:
    """Latent mean of a target image made at the size of the pixels it is compared with,
    encoded once per size (views of one image come in a few sizes)."""
    cache = {}

    def target(pixels: Tensor) -> Tensor:
        size = tuple(pixels.shape[-2:])
        if size not in cache:
            with torch.no_grad():
                cache[size] = encode(model, make_image(*size).to(pixels)).mean.float()
        return cache[size]

    return target


def mist(model: DiffusionModel, samples: int = 1) -> Objective:
    """Mist's fused objective: pull the latent towards a target texture (textural loss)
    while raising the diffusion loss (semantic loss)."""
    target = target_latents(model, target_texture)

    def objective(pixels: Tensor, draws: Draws) -> Tensor:
        latent = encode(model, pixels)
        z = posterior_sample(latent, draws)
        textural = (latent.mean.float() - target(pixels)).pow(2).mean()
        return semantic_loss(model, z, draws, samples) - MIST_TEXTURE_WEIGHT * textural

    return objective


def photoguard(model: DiffusionModel, samples: int = 1) -> Objective:
    """PhotoGuard's encoder attack: pull the posterior mean to the latent of flat grey."""
    target = target_latents(model, lambda h, w: torch.full((1, 3, h, w), 0.5))

    def objective(pixels: Tensor, draws: Draws) -> Tensor:
        return -(encode(model, pixels).mean.float() - target(pixels)).norm()

    return objective


def ace(model: DiffusionModel, samples: int = 1) -> Objective:
    """Mist v2's targeted objective, ACE (Zheng et al. 2023): pull what the network predicts
    (its noise, v or velocity output) towards the latent of a fixed target pattern, on the
    posterior mean as the official code does. A model fine-tuned on the image then learns to
    put that pattern into what it generates."""
    target = target_latents(model, target_texture)

    def objective(pixels: Tensor, draws: Draws) -> Tensor:
        z = encode(model, pixels).mean
        sigma = draws.sigmas(samples)
        noise = draws.normal((samples, *z.shape[1:])).to(z.dtype)
        x = noised(model.prediction, z.expand_as(noise), sigma, noise)
        predicted = network_output(model.prediction, x, sigma, model.denoise(x, sigma))
        return -(predicted - target(pixels)).pow(2).mean()

    return objective


OBJECTIVES = {"advdm": advdm, "ace": ace, "mist": mist, "photoguard": photoguard, "sds": sds}
# Fine-tune-aware methods (advdm.attack.surrogate): an objective attacked through a LoRA surrogate
# that keeps learning the protected image. Users look for them by these names.
SURROGATE_METHODS = {"anti-dreambooth": "advdm", "mist-v2": "ace"}
METHODS = (*OBJECTIVES, *SURROGATE_METHODS)


def objective_of(method: str) -> Callable[..., Objective]:
    return OBJECTIVES[SURROGATE_METHODS.get(method, method)]
