"""Backward with frozen weights: save what the input gradient needs, nothing more.

The attack differentiates w.r.t. the image only. A convolution's gradient w.r.t. its
input needs only the weight, yet autograd saves the convolution's *input* as well (it
would need it for the weight's gradient; linear layers already skip it). In the SD1.5 VAE
encoder those inputs are 38 % of everything kept for backward, and the encoder's graph is
alive during the whole UNet backward. Inside ``input_grad_only()`` such convolutions save
only their weight (which autograd saved anyway). Same kernels, same gradients.

Works on whatever calls ``torch.nn.functional.conv*d`` (diffusers, ldm, ComfyUI's casting
ops), so every host adapter gets it. Convolutions whose weights require grad, calls
without grad, under autocast, or with string padding run unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_CONV_INPUT_GRAD = {
    F.conv1d: torch.nn.grad.conv1d_input,
    F.conv2d: torch.nn.grad.conv2d_input,
    F.conv3d: torch.nn.grad.conv3d_input,
}


class _FrozenConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, conv, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(weight)
        ctx.conv, ctx.shape, ctx.args = conv, x.shape, (stride, padding, dilation, groups)
        return conv(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        grad_input = _CONV_INPUT_GRAD[ctx.conv](ctx.shape, weight, grad, *ctx.args)
        return None, grad_input, None, None, None, None, None, None


def _frozen(t) -> bool:
    return t is None or not t.requires_grad


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 (A1111 ships 2.1)
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def _conv_args(args, kwargs):
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    defaults = (None, None, None, 1, 0, 1, 1)
    bound = dict(zip(names, defaults))
    bound.update(zip(names, args))
    bound.update(kwargs)
    return [bound[n] for n in names]


class _InputGradOnly(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONV_INPUT_GRAD:
            x, weight, bias, stride, padding, dilation, groups = _conv_args(args, kwargs)
            if (torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad
                    and _frozen(weight) and _frozen(bias) and not isinstance(padding, str)
                    and not _autocast_on(x.device.type)):
                return _FrozenConv.apply(func, x, weight, bias, stride, padding, dilation, groups)
        return func(*args, **kwargs)


def input_grad_only() -> TorchFunctionMode:
    """A context in which frozen convolutions save no activations for backward."""
    return _InputGradOnly()


def recomputed(fn):
    """fn(pixels) recomputed in backward instead of keeping its activations (non-reentrant
    checkpoint). The recomputation must save what the forward saved, so both run inside
    input_grad_only() whichever thread autograd recomputes on."""
    from torch.utils.checkpoint import checkpoint

    def run(pixels):
        with input_grad_only():
            return fn(pixels)

    def wrapped(pixels):
        if not torch.is_grad_enabled():
            return fn(pixels)
        return checkpoint(run, pixels, use_reentrant=False)

    return wrapped
