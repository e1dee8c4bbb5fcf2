"""Fine-tune-aware protection: the model the attack differentiates keeps learning the image.

A mimic does not use the model as it is; it fine-tunes a LoRA on the artist's images first.
ASPL (Anti-DreamBooth, Van Le et al. 2023) and Mist v2 therefore alternate the attack with
fine-tuning a surrogate on the current protected images. Here: every ``every`` PGD steps,
``steps`` AdamW steps of a LoRA on the denoiser (advdm.mimic.finetune, the mimic's own recipe at
batch 1) on the current protected image, and the PGD steps maximise the objective through
the adapted denoiser.

The LoRA is the core's (advdm.mimic.lora): forward hooks, removed on leaving, so the user's model
is exactly as it was. Its parameters require grad only while it trains, so during a PGD step
autograd keeps nothing for them and the step costs what an AdvDM step costs; what is added
is the adapters, their optimiser state, and the training steps (one denoiser forward and
backward each, no encoder).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, List, Optional, Sequence

import torch
from torch import Tensor

from ..mimic.finetune import FinetuneConfig, train
from ..mimic.lora import lora_adapters
from ..models.interface import DiffusionModel


class Surrogate:
    def __init__(self, model: DiffusionModel, params: Sequence[torch.nn.Parameter], every: int, steps: int,
                 lr: float, seed: int):
        self.model, self.params = model, list(params)
        self.every, self.seed = every, seed
        self.finetune = FinetuneConfig(steps=steps, batch=1, lr=lr)
        # One optimiser for the whole attack: the surrogate is one fine-tune, interrupted.
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.phases = 0
        self.losses: List[float] = []
        self._trainable(False)

    def _trainable(self, on: bool) -> None:
        for p in self.params:
            p.requires_grad_(on)

    def due(self, step: int) -> bool:
        """Fine-tune before PGD steps 0, every, 2 * every, ...: the first steps already face
        a model adapted to the image, as the mimic's is."""
        return step % self.every == 0

    def learn(self, image: Tensor, progress: Optional[Callable[[int, int], None]] = None) -> None:
        """``steps`` fine-tuning steps on image (1, 3, H, W) in [0, 1], each phase with its own draws."""
        self._trainable(True)
        try:
            seed = self.seed + 1000 * (self.phases + 1)
            self.losses += train(self.model, self.params, [image.detach()], self.finetune, seed, progress,
                                 optimizer=self.optimizer)
        finally:
            self._trainable(False)
            self.optimizer.zero_grad(set_to_none=True)
        self.phases += 1


def phases(steps: int, every: int) -> int:
    """Fine-tuning phases in an attack of ``steps`` PGD steps."""
    return -(-steps // every) if steps else 0


@contextlib.contextmanager
def surrogate(model: DiffusionModel, every: int, steps: int, rank: int, lr: float,
              seed: int) -> Iterator[Surrogate]:
    """A LoRA surrogate on model's denoiser for the duration; the model is restored on leaving."""
    if model.denoiser_network is None:
        raise ValueError(f"{model.name}: this host adapter does not expose its denoiser network, so a fine-tune-aware "
                         "method cannot train its LoRA surrogate; use advdm or ace")
    with lora_adapters(model.denoiser_network, rank=rank, seed=seed) as params:
        yield Surrogate(model, params, every, steps, lr, seed)
