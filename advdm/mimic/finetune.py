"""A mimic's LoRA fine-tune on a handful of images, with the model's own training loss.

What a DreamBooth-style LoRA does to an artist's images, reduced to the DiffusionModel
interface: the images are encoded once (as kohya / diffusers scripts cache latents), then
each step takes a batch of them, draws training timesteps and noise, and descends
``advdm.models.interface.diffusion_loss`` (the family's native loss) on the adapters only. Used inside
``lora_finetuned``: on leaving, the adapters are gone and the model is as it was.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence

import torch
from torch import Tensor

from ..models.draws import Draws, posterior_sample
from ..models.frozen import input_grad_only
from .lora import lora_adapters
from ..models.interface import DiffusionModel, diffusion_loss
from .views import bucket_size, pad_to_multiple, resize


@dataclass
class FinetuneConfig:
    # Sized for a consumer GPU on SD1.5 (rank 8, a few hundred steps of 4 images); the test-bed
    # smoke run lowers steps, not the recipe.
    steps: int = 300
    rank: int = 8
    alpha: Optional[float] = None  # None: alpha = rank (scale 1)
    lr: float = 1e-4
    batch: int = 4  # images per step
    convs: bool = False  # also adapt the ungrouped Conv2d layers (LoCon)
    resolution: Optional[int] = None  # larger images are resized to about this area (default: the model's)

    def __post_init__(self):
        if self.steps < 1 or self.batch < 1 or not self.lr > 0:
            raise ValueError(f"fine-tune needs steps >= 1, batch >= 1 and lr > 0, got {self.steps}, {self.batch}, {self.lr}")


def mimic_view(model: DiffusionModel, image: Tensor, resolution: Optional[int] = None) -> Tensor:
    """The image as a fine-tuning script feeds it: above the training area it is resized to
    a bucket of about resolution^2 pixels (aspect kept); sides padded to the model's multiple."""
    res = resolution or model.train_resolution
    h, w = image.shape[-2:]
    if h * w > res * res:
        image = resize(image, bucket_size(h, w, res, model.pixel_multiple))
    return pad_to_multiple(image.float().cpu(), model.pixel_multiple)


def _batches(count: int, batch: int, steps: int, gen: torch.Generator) -> Iterator[List[int]]:
    """Epochs of seeded permutations, cut into batches (the last of an epoch may be short)."""
    order: List[int] = []
    for _ in range(steps):
        if len(order) < min(batch, count):
            order += torch.randperm(count, generator=gen).tolist()
        yield [order.pop(0) for _ in range(min(batch, count))]


class FineTuneDiverged(ValueError):
    """A fine-tune whose gradients are not finite even unscaled: its settings (the learning rate)
    make the loss diverge. A ValueError, so that each entry point reports it as a bad setting
    (the API's 400, the command line's message) rather than a crash."""


class LossScaler:
    """Dynamic loss scaling (as torch.amp.GradScaler, on any device and any torch): the loss
    is multiplied by a power of two before backward, so gradients through a float16 network
    stay above its smallest numbers (at 512 px a diffusion loss's gradients reach the network
    at about 1e-7, where float16 keeps a bit or two, or zero), and divided out again in the
    float32 adapters. A power of two is exact, so float32 and bfloat16 gradients come out the
    same as unscaled. On an overflow the scale halves and the caller redoes the step on the
    same draws (no step is skipped, so every precision takes the same steps); after
    `growth_interval` clean steps it doubles."""

    def __init__(self, scale: float = 2.0 ** 16, growth_interval: int = 50, max_scale: float = 2.0 ** 24):
        self.scale = scale
        self.growth_interval = growth_interval
        self.max_scale = max_scale
        self.clean_steps = 0

    def unscale(self, params: Sequence[torch.nn.Parameter]) -> bool:
        """Divide the gradients by the scale; False (scale halved, gradients dropped) if any
        is not finite: redo the step. At scale 1 a non-finite gradient is the loss's own
        (a diverging fine-tune) and is raised."""
        grads = [p.grad for p in params if p.grad is not None]
        if grads and not bool(torch.isfinite(torch.stack([g.detach().abs().amax().float() for g in grads])).all()):
            if self.scale <= 1:
                raise FineTuneDiverged("the fine-tune's gradients are not finite even unscaled: the loss "
                                       "diverged (try a lower learning rate)")
            self.scale /= 2
            self.clean_steps = 0
            for p in params:
                p.grad = None
            return False
        for g in grads:
            g.div_(self.scale)
        self.clean_steps += 1
        if self.clean_steps >= self.growth_interval and self.scale < self.max_scale:
            self.scale *= 2
            self.clean_steps = 0
        return True


def train(model: DiffusionModel, params: Sequence[torch.nn.Parameter], images: Sequence[Tensor],
          config: FinetuneConfig, seed: int, progress: Optional[Callable[[int, int], None]] = None,
          optimizer: Optional[torch.optim.Optimizer] = None, scaler: Optional[LossScaler] = None,
          conditioned: Optional[Callable[[], DiffusionModel]] = None) -> List[float]:
    """config.steps AdamW steps on params (or steps of the given optimizer over them);
    returns the loss of every step. With `conditioned`, each step's loss runs through the
    model it returns (textual inversion: the prompt encoded anew, through the learning word).

    The base weights are frozen, so backward runs inside input_grad_only(): frozen
    convolutions keep no activations for it (the adapters' own layers do keep theirs).
    Backward goes through the network in its own precision with dynamic loss scaling
    (a fresh LossScaler unless one is given: a caller that trains in rounds, like the
    attack's surrogate, can keep the scale it found); the adapters and their optimizer stay
    float32."""
    draws = Draws(model, seed + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    history = []
    scaler = scaler or LossScaler()
    with torch.inference_mode(False):
        with torch.no_grad():
            latents = [model.encode(mimic_view(model, x, config.resolution).to(model.device, model.dtype))
                       for x in images]
        opt = optimizer or torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        with torch.enable_grad(), input_grad_only():
            for step, idx in enumerate(_batches(len(latents), config.batch, config.steps, gen)):
                batch = []
                for shape in {tuple(latents[i].mean.shape) for i in idx}:  # images of one size share a forward
                    group = [latents[i] for i in idx if tuple(latents[i].mean.shape) == shape]
                    z = torch.cat([posterior_sample(lat, draws) for lat in group])
                    batch.append((z, draws.sigmas(len(group)), draws.normal(z.shape).to(z.dtype)))
                while True:  # redone on the same draws after a scaled-gradient overflow
                    total = 0.0
                    tuned = conditioned() if conditioned is not None else model
                    for j, (z, sigma, noise) in enumerate(batch):
                        loss = diffusion_loss(tuned, z, sigma, noise).sum() / len(idx)
                        # the groups share the prompt's encoding: keep its graph for the next one
                        (loss * scaler.scale).backward(retain_graph=conditioned is not None and j < len(batch) - 1)
                        total += loss.item()
                    if scaler.unscale(params):
                        break
                opt.step()
                opt.zero_grad(set_to_none=True)
                history.append(total)
                if progress is not None:
                    progress(step + 1, config.steps)
    return history


@contextlib.contextmanager
def lora_finetuned(model: DiffusionModel, images: Sequence[Tensor], config: FinetuneConfig, seed: int = 0,
                   progress: Optional[Callable[[int, int], None]] = None) -> Iterator[DiffusionModel]:
    """The model with a LoRA fine-tuned on images for the duration (the same object: its
    denoiser runs through the adapters), restored exactly on leaving."""
    if model.denoiser_network is None:
        raise ValueError(f"{model.name}: this host adapter does not expose its denoiser network, so no LoRA can be trained")
    if not images:
        raise ValueError("no images to fine-tune on")
    with lora_adapters(model.denoiser_network, config.rank, config.alpha, config.convs, seed) as params:
        train(model, params, images, config, seed, progress)
        yield model
