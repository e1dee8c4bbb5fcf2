"""Low-rank adapters (LoRA, Hu et al. 2021) on a host's own denoiser, removed afterwards.

A mimic's cheapest fine-tune is a LoRA: W x + (alpha / r) B A x, B starting at zero, on
the denoiser's Linear (and optionally Conv) layers. Here the adapters are forward hooks on
the host's modules, not replacements of them: the user's network object, its weights and
its module tree are never written to, whatever the host's layer classes are (diffusers,
ldm, ComfyUI's casting ops). Inside ``lora_adapters`` every base parameter is frozen, so
gradients reach only the adapters; on leaving - normally, on an exception or on an
interrupt - the hooks are removed and the requires_grad flags restored, so the model is
bit-identical to what it was.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, List

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _is_linear(module: nn.Module) -> bool:
    """nn.Linear, or a host's own linear layer that is not one: Forge 2.x's
    backend.operations.ForgeOperations.Linear is a bare nn.Module with in_features,
    out_features and a 2-D weight (F.linear in its forward)."""
    if isinstance(module, nn.Linear):
        return True
    w = getattr(module, "weight", None)
    return (type(module).__name__ == "Linear" and isinstance(w, torch.Tensor) and w.dim() == 2
            and getattr(module, "in_features", None) == w.shape[1]
            and getattr(module, "out_features", None) == w.shape[0])


class _Adapter(nn.Module):
    """B A for one layer, in float32 on the layer's device."""

    def __init__(self, layer: nn.Module, rank: int, alpha: float, gen: torch.Generator):
        super().__init__()
        device = layer.weight.device
        self.scale = alpha / rank
        self.layer = [layer]  # a list, so the host's layer is not registered as our submodule
        self.linear = _is_linear(layer)
        if self.linear:
            fan_in = layer.in_features
            down = torch.randn(rank, fan_in, generator=gen) / math.sqrt(fan_in)
            up = torch.zeros(layer.out_features, rank)
        else:  # Conv2d: A has the layer's kernel and stride, B is 1x1 (as kohya's conv LoRA)
            fan_in = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
            down = torch.randn(rank, layer.in_channels, *layer.kernel_size, generator=gen) / math.sqrt(fan_in)
            up = torch.zeros(layer.out_channels, rank, 1, 1)
        self.down = nn.Parameter(down.to(device))
        self.up = nn.Parameter(up.to(device))

    def delta(self, x: Tensor) -> Tensor:
        layer = self.layer[0]
        x = x.to(self.down.device, torch.float32)
        if self.linear:
            return F.linear(F.linear(x, self.down), self.up) * self.scale
        h = F.conv2d(x, self.down, None, layer.stride, layer.padding, layer.dilation)
        return F.conv2d(h, self.up) * self.scale

    def hook(self, module: nn.Module, args, output: Tensor) -> Tensor:
        return output + self.delta(args[0]).to(output.device, output.dtype)


def _wrappable(module: nn.Module, convs: bool) -> bool:
    if _is_linear(module):
        return True
    return (convs and isinstance(module, nn.Conv2d) and module.groups == 1
            and module.padding_mode == "zeros")


@contextlib.contextmanager
def lora_adapters(network: nn.Module, rank: int = 8, alpha: float = None, convs: bool = False,
                  seed: int = 0) -> Iterator[List[nn.Parameter]]:
    """Adapters on every Linear (and, with convs, every ungrouped Conv2d) of network for the
    duration; yields their parameters (the only ones that require grad inside)."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    gen = torch.Generator().manual_seed(int(seed))
    flags = [(p, p.requires_grad) for p in network.parameters()]
    handles, params = [], []
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.inference_mode(False):  # hosts may call in inference mode; adapters must train
            for module in network.modules():
                if _wrappable(module, convs):
                    adapter = _Adapter(module, rank, float(alpha or rank), gen)
                    handles.append(module.register_forward_hook(adapter.hook))
                    params += [adapter.down, adapter.up]
        if not params:
            raise ValueError(f"{type(network).__name__} has no Linear{' or Conv2d' if convs else ''} layer to adapt")
        yield params
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
