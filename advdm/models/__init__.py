"""The models: the DiffusionModel interface every host adapter and model family plugs into
(interface), the diffusers and built-in families behind it, checkpoint loading, the draws that
fix a Monte-Carlo estimate, and the tensor helpers that host adapters share (frozen,
host_tensors). Nothing here knows about attacks, mimics or judges."""
from .interface import DiffusionModel, Latent, diffusion_loss, noised, sigmas_from_alphas_cumprod

__all__ = ["DiffusionModel", "Latent", "diffusion_loss", "noised", "sigmas_from_alphas_cumprod"]
