"""The textual-inversion route (advdm.models.interface.TextRoute) of a web UI's loaded model,
shared by the A1111 and the Forge adapters. Imports nothing from the web UI.

Both hosts encode a prompt through per-encoder text models that tokenize without special
tokens (`tokenize([text]) -> [[ids]]`) and wrap each encoder's token-embedding table in a module
that splices in the user's embedding files (A1111: sd_hijack.EmbeddingsWithFixes; Forge:
classic_engine.CLIPEmbeddingForTextualInversion), which calls the real nn.Embedding as
`wrapped(input_ids)`. The mimic's forward hook goes on that real table, so the host's prompt
parsing, chunking, emphasis and clip skip all run as in a generation.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, List, Sequence

import torch

from advdm import DiffusionModel
from advdm.models.interface import TextRoute, single_token


@dataclass
class TextModel:
    """One text encoder as the host drives it."""

    tokenize: Callable[[List[str]], List[List[int]]]  # no special tokens, the host's own tokenizer
    table: torch.nn.Embedding  # the real token-embedding table under the host's wrapper
    encoder: torch.nn.Module  # the encoder itself, which the mimic leaves as it was
    embeddings: Any = None  # the host's embedding-file database (find_embedding_at_position), if any


def token_table(module: Any) -> torch.nn.Embedding:
    """The nn.Embedding under a host's embedding-file wrapper (or the module itself)."""
    if isinstance(module, torch.nn.Embedding):
        return module
    inner = getattr(module, "wrapped", None)
    if isinstance(inner, torch.nn.Embedding):
        return inner
    raise ValueError(f"textual inversion: the text encoder's token embedding is a {type(module).__name__}, which "
                     "this adapter does not know")


def route(text_models: Sequence[TextModel], encode: Callable[[str], Any], denoiser: Callable[[Any], Callable],
          plain: DiffusionModel, source: str) -> TextRoute:
    """The route over these text models: prompted(prompt) is `plain` denoising with encode(prompt)
    (the host's conditioning, computed with gradients) bound by denoiser(cond)."""

    def ids(word: str) -> List[int]:
        out = []
        for m in text_models:
            tokens = m.tokenize([word])[0]
            found = None if m.embeddings is None else m.embeddings.find_embedding_at_position(tokens, 0)[0]
            if found is not None:  # the host would splice its vectors in: the learned word never reached the table
                raise ValueError(f"{source}: {word!r} is the name of the textual-inversion embedding "
                                 f"{getattr(found, 'name', word)!r} in the web UI's embeddings folder; choose "
                                 "another ti_word (and ti_prompt)")
            out.append(single_token(word, tokens, source))
        return out

    def prompted(prompt: str) -> DiffusionModel:
        return replace(plain, denoise=denoiser(encode(prompt)), text=None)

    return TextRoute([m.table for m in text_models], ids, prompted, [m.encoder for m in text_models])
