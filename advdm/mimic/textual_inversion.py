"""A mimic's textual inversion (Gal et al. 2022; the paper's headline mimic): a new word's
embedding is learned from a handful of the artist's images with the model's own diffusion
loss, everything else frozen, and the unchanged model is then prompted with that word.

The recipe of the diffusers / kohya scripts, reduced to what a host gives (models.interface
.TextRoute): an existing rarely used token (default "sks") stands for the new word, so the
tokenizer and the embedding tables are never touched. Its vector starts as an initialiser
word's and is substituted into the embedding tables' output by a forward hook, so the text
encoder, however the host wraps it, runs as always and gradients reach only the vector. On
leaving, the hooks are gone and the model and its text encoder are exactly as they were.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, List, Optional, Sequence

import torch
from torch import Tensor

from ..models.interface import DiffusionModel, TextRoute
from .finetune import FinetuneConfig, train


def text_route(model: DiffusionModel) -> TextRoute:
    if model.text is None:
        raise ValueError(f"{model.name}: textual inversion needs the model's text encoder, which this entry point "
                         "does not give (use the LoRA mimic, or a model loaded with its text encoder)")
    return model.text


def check_prompt(prompt: str, token: str) -> None:
    if token not in prompt.split():
        raise ValueError(f"the textual-inversion prompt {prompt!r} does not contain the learned word {token!r}")


@contextlib.contextmanager
def substituted(route: TextRoute, token: str, vectors: Sequence[Tensor]) -> Iterator[None]:
    """While inside, every lookup of `token` in the route's embedding tables returns
    `vectors` (one per table) instead of the table's row."""
    hooks = []
    for table, token_id, vector in zip(route.embeddings, route.token_ids(token), vectors):
        def hook(module, args, out, token_id=token_id, vector=vector):
            where = (args[0] == token_id).unsqueeze(-1)
            return torch.where(where.to(out.device), vector.to(out.device, out.dtype), out)
        hooks.append(table.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def initial_vectors(route: TextRoute, init: str) -> List[torch.nn.Parameter]:
    """Float32 copies of the initialiser word's rows, the parameters that learn."""
    return [torch.nn.Parameter(table.weight[token_id].detach().float().clone())
            for table, token_id in zip(route.embeddings, route.token_ids(init))]


@contextlib.contextmanager
def textual_inversion(model: DiffusionModel, images: Sequence[Tensor], config: FinetuneConfig, prompt: str,
                      token: str = "sks", init: str = "painting", seed: int = 0,
                      progress: Optional[Callable[[int, int], None]] = None) -> Iterator[DiffusionModel]:
    """The model prompted with `prompt`, whose word `token` means what config.steps steps of
    textual inversion on `images` taught it (config.lr, .batch, .resolution; the LoRA's
    rank and convs are not used), for the duration."""
    route = text_route(model)
    check_prompt(prompt, token)
    if not images:
        raise ValueError("no images to learn the word from")
    vectors = initial_vectors(route, init)
    with substituted(route, token, vectors):
        train(model, vectors, images, config, seed, progress, conditioned=lambda: route.prompted(prompt))
        with torch.no_grad():
            yield route.prompted(prompt)
