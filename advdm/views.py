"""What the model sees of the image at each PGD step.

A view is a differentiable function from the native-resolution pixels to a model input;
gradients flow back through it to the native pixels, so the perturbation always lives on
the original image at its own size.

- "full": the whole image at native resolution (padded to the model's multiple).
"""
from __future__ import annotations

from typing import Callable, List

import torch.nn.functional as F
from torch import Tensor

from .draws import Draws
from .model import DiffusionModel

View = Callable[[Tensor], Tensor]
MODES = ("full",)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Reflect-pad bottom and right so both sides are a multiple (differentiable)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class Views:
    """Draws the views for each step; their losses' gradients are summed."""

    def __init__(self, model: DiffusionModel, config, size):
        self.model = model
        self.mode = "full"

    def sample(self, draws: Draws) -> List[View]:
        multiple = self.model.pixel_multiple
        return [lambda x: pad_to_multiple(x, multiple)]
