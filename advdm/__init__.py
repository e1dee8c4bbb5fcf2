"""AdvDM and its family of protections against diffusion-model mimicry.

Host-agnostic core: a host adapter builds a DiffusionModel (model.py) from what it has
loaded; protect() runs the attack and measure() checks it.
"""
from . import settings
from .attack import PRESETS, ProtectConfig, protect, quantize
from .loss import advdm_loss
from .evaluation.measure import format_measurement, measure
from .model import DiffusionModel, Latent, diffusion_loss, sigmas_from_alphas_cumprod

__version__ = "0.1.0"

__all__ = [
    "DiffusionModel",
    "Latent",
    "PRESETS",
    "ProtectConfig",
    "advdm_loss",
    "diffusion_loss",
    "format_measurement",
    "measure",
    "protect",
    "quantize",
    "settings",
    "sigmas_from_alphas_cumprod",
]
