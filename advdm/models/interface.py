"""The model interface every host adapter and model family plugs into.

Like k-diffusion, a model is reduced to two differentiable functions and a schedule:

    encode(pixels)   -> Latent(mean, std)   pixels NCHW in [0, 1], latent already in the
                                            space the denoiser works in (scaled and shifted)
    denoise(x, sigma) -> predicted clean latent, conditioning already bound
    decode(latent)   -> pixels NCHW in [0, 1] (optional; evaluation's purifications need it)

The noisy input follows the model's parameterisation (see ``noised``):
eps / v models take the variance-exploding form ``x = z + sigma * n`` (the denoiser scales
its input by 1/sqrt(sigma^2 + 1) itself); rectified-flow models take
``x = (1 - sigma) * z + sigma * n``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

PREDICTIONS = ("eps", "v", "flow")


@dataclass
class Latent:
    """The encoder's diagonal Gaussian posterior, in the denoiser's latent space."""

    mean: Tensor
    std: Optional[Tensor] = None  # None: a deterministic encoder

    def sample(self, noise: Optional[Tensor] = None) -> Tensor:
        """Reparameterised sample, so gradients flow through mean and std."""
        if self.std is None or noise is None:
            return self.mean
        return self.mean + self.std * noise


@dataclass
class TextRoute:
    """What a textual-inversion mimic needs of a host's text encoder(s): the token-embedding
    tables a prompt's words are looked up in (one per encoder), a word's single token id in
    each, and the model conditioned on a prompt, encoded anew each call (so gradients reach
    an embedding substituted into those tables' outputs)."""

    embeddings: Sequence[torch.nn.Embedding]
    token_ids: Callable[[str], Sequence[int]]  # raises ValueError unless the word is one token
    prompted: Callable[[str], "DiffusionModel"]
    encoders: Sequence[torch.nn.Module] = ()  # the text encoders themselves, which a mimic leaves as they were


def single_token(word: str, ids: Sequence[int], source: str) -> int:
    """The one token id a tokenizer gave for word; a ValueError naming source otherwise."""
    if len(ids) != 1:
        raise ValueError(f"{source}: {word!r} is {len(ids)} tokens for this tokenizer; textual inversion needs a "
                         "word that is one token")
    return ids[0]


@dataclass
class DiffusionModel:
    encode: Callable[[Tensor], Latent]
    denoise: Callable[[Tensor, Tensor], Tensor]
    prediction: str  # "eps" | "v" | "flow"
    # Discrete training schedule as ascending sigmas (eps / v models), one per timestep.
    sigmas: Optional[Tensor] = None
    # Flow models: training shift of the sigma distribution and whether t is logit-normal.
    flow_shift: float = 1.0
    flow_logit_normal: bool = False
    # Pixel sides must be a multiple of this (VAE downsampling x transformer patch size).
    pixel_multiple: int = 8
    # The side length the family was trained at (and a mimic's fine-tuning resizes to).
    train_resolution: int = 512
    latent_channels: int = 4
    name: str = "model"
    # Device and dtype pixels should be sent to the encoder in.
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    # Latent (denoiser space) -> pixels NCHW in [0, 1], float32. Need not be differentiable;
    # None where an adapter has no decoder (then the purification rows are skipped).
    decode: Optional[Callable[[Tensor], Tensor]] = None
    # The torch module `denoise` runs (UNet / transformer), whose Linear and Conv layers a
    # LoRA may wrap (advdm.mimic.lora); None where an adapter cannot hand it out.
    denoiser_network: Optional[torch.nn.Module] = None
    # The text encoder route (advdm.mimic.textual_inversion); None where the adapter has none.
    text: Optional[TextRoute] = None

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.prediction != "flow" and self.sigmas is None:
            raise ValueError(f"a {self.prediction!r} model needs its discrete sigma schedule")


def sigmas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t), kept in float32 (fp16 loses the small ones)."""
    abar = alphas_cumprod.detach().to(torch.float32).cpu()
    return ((1 - abar) / abar).sqrt()


def noised(prediction: str, z: Tensor, sigma: Tensor, noise: Tensor) -> Tensor:
    """The noisy latent x_t the denoiser expects for latent z at noise level sigma."""
    s = sigma.view(-1, *([1] * (z.dim() - 1))).to(z.dtype)
    if prediction == "flow":
        return (1 - s) * z + s * noise
    return z + s * noise


def loss_weight(prediction: str, sigma: Tensor) -> Tensor:
    """w(sigma) such that w * ||D - z||^2 is the family's native training loss.

    eps: ||eps_hat - eps||^2; v: ||v_hat - v||^2; flow: ||v_hat - (n - z)||^2.
    """
    if prediction == "v":
        return (1 + sigma**2) / sigma**2
    return 1 / sigma**2


def network_output(prediction: str, x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """What the network itself predicts (eps, v, or the flow velocity n - z), recovered in
    float32 from the denoiser's D(x, sigma): the quantity its training loss compares."""
    s = sigma.view(-1, *([1] * (x.dim() - 1))).float()
    x, denoised = x.float(), denoised.float()
    eps = (x - denoised) / s  # flow: (x - D) / sigma is the velocity
    if prediction == "v":  # v = a * eps - b * z in the variance-preserving form
        return (eps - s * denoised) / (1 + s**2).sqrt()
    return eps


def diffusion_loss(model: DiffusionModel, z: Tensor, sigma: Tensor, noise: Tensor) -> Tensor:
    """Per-sample native training loss (mean over latent elements), shape (K,).

    z is broadcast against K noise samples: z (1 or K, C, H, W), sigma (K,), noise (K, C, H, W).
    """
    z = z.expand_as(noise)
    x = noised(model.prediction, z, sigma, noise)
    denoised = model.denoise(x, sigma)
    err = (denoised.float() - z.float()).pow(2).flatten(1).mean(1)
    return loss_weight(model.prediction, sigma.to(err)) * err
