"""What every host adapter (ComfyUI, Automatic1111, Forge) needs to run a backward pass
through a model the host loaded for inference only.

- Hosts load under ``torch.inference_mode()``: their weights, conditioning and schedules are
  inference tensors, which cannot be saved for backward. ``make_trainable_copies`` swaps in
  ordinary copies (same values), ``ordinary`` clones nested inputs.
- The attack differentiates w.r.t. the image only: ``frozen`` turns requires_grad off and puts
  each flag back after, also on parameters that are (again) inference tensors.
- Host networks update residual streams with ``x += f(norm(x))`` after the norm saved ``x``
  for backward; ``AugmentedAssignOutOfPlace`` runs augmented assignments out of place.
"""
from __future__ import annotations

import contextlib
import dis
import sys
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode


def is_inference(t: Optional[Tensor]) -> bool:
    return isinstance(t, Tensor) and t.is_inference()


def make_trainable_copies(modules: Iterable[torch.nn.Module]) -> Dict[str, int]:
    """Replace every inference parameter / buffer of the modules with an ordinary clone.

    Must run outside inference mode (the clone of an inference tensor made there is an
    ordinary tensor). Parameters stay Parameters with their requires_grad flag (freeze them
    with ``frozen``); only inference tensors are copied, one at a time, so memory grows by one tensor at most once the host
    drops the original. The values are unchanged, so the host keeps sampling with them.
    Returns counts for logging.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("make_trainable_copies must run under torch.inference_mode(False)")
    counts = {"parameters": 0, "buffers": 0}
    seen = set()
    copies: Dict[int, torch.nn.Parameter] = {}  # a parameter two modules register stays one (Forge's CLIP wrapper)
    for root in modules:
        for module in root.modules():
            if id(module) in seen:
                continue
            seen.add(id(module))
            for name, p in list(module._parameters.items()):
                if is_inference(p):
                    if id(p) not in copies:
                        copies[id(p)] = torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
                        counts["parameters"] += 1
                    module._parameters[name] = copies[id(p)]
            for name, b in list(module._buffers.items()):
                if is_inference(b):
                    module._buffers[name] = b.clone()
                    counts["buffers"] += 1
    return counts


def _set_requires_grad(p: Tensor, flag: bool) -> None:
    if p.requires_grad == flag:
        return
    if p.is_inference():  # only allowed inside inference mode
        with torch.inference_mode():
            p.requires_grad_(flag)
    else:
        p.requires_grad_(flag)


@contextlib.contextmanager
def frozen(modules: Iterable[torch.nn.Module]):
    """requires_grad False on every parameter for the duration; restores the flags after."""
    saved: List[Tuple[torch.nn.Parameter, bool]] = []
    for m in modules:
        for p in m.parameters():
            saved.append((p, p.requires_grad))
            _set_requires_grad(p, False)
    try:
        yield
    finally:
        for p, flag in saved:
            _set_requires_grad(p, flag)


def ordinary(x: Any, detach: bool = True) -> Any:
    """Ordinary (non-inference) clones of every tensor in a nested structure, detached unless
    detach=False (then a tensor computed with gradients keeps its graph: a learned word's)."""
    if isinstance(x, Tensor):
        return x.detach().clone() if x.is_inference() else (x.detach() if detach else x)
    if isinstance(x, dict):
        return {k: ordinary(v, detach) for k, v in x.items()}
    if isinstance(x, list):
        return [ordinary(v, detach) for v in x]
    if isinstance(x, tuple):
        return tuple(ordinary(v, detach) for v in x)
    return x


# Augmented assignment: which opcode at the caller's last instruction means `x <op>= y`.
# Python 3.11+ has one BINARY_OP whose argument names the operator; 3.10 has INPLACE_* opcodes.
_SYMBOLS = {"add_": "+=", "sub_": "-=", "mul_": "*=", "div_": "/="}
_INPLACE_310 = {"INPLACE_ADD": "+=", "INPLACE_SUBTRACT": "-=", "INPLACE_MULTIPLY": "*=", "INPLACE_TRUE_DIVIDE": "/="}


def augmented_symbol(code: bytes, i: int, opmap=None, nb_ops=None) -> Optional[str]:
    """The augmented-assignment symbol ('+=', ...) of the instruction at byte offset i, else None."""
    opmap = dis.opmap if opmap is None else opmap
    nb_ops = getattr(dis, "_nb_ops", None) if nb_ops is None else nb_ops
    if not 0 <= i < len(code):
        return None
    binary_op = opmap.get("BINARY_OP")
    if binary_op is not None:  # 3.11+
        if code[i] == binary_op and i + 1 < len(code) and nb_ops:
            sym = nb_ops[code[i + 1]][1]
            return sym if sym.endswith("=") else None
        return None
    for name, sym in _INPLACE_310.items():
        if code[i] == opmap.get(name):
            return sym
    return None


class AugmentedAssignOutOfPlace:
    """While active (and grad is enabled), `x += y` (and -=, *=, /=) on tensors runs out of place.

    Networks that update a residual stream with `x += f(norm(x))` after the norm saved x for
    backward (Flux in ComfyUI, Forge's UNet) make the backward fail ("modified by an inplace
    operation"). Python rebinds the name to whatever __iadd__ returns, so returning a new
    tensor is exact for an augmented assignment. Explicit method calls (`t.add_(1)` as a
    statement) keep running in place: the calling bytecode is checked, and only the
    augmented-assignment opcodes switch (BINARY_OP on 3.11+, INPLACE_* on 3.10). Other
    TorchFunctionModes may sit above this one (the core's `frozen.input_grad_only` does,
    during the attack) and call the op from their own `__torch_function__`: those frames are
    skipped to reach the code that wrote `x += y`.
    """

    def __init__(self):
        table = {getattr(Tensor, k): (getattr(Tensor, k[:-1]), sym) for k, sym in _SYMBOLS.items()}

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                hit = table.get(func)
                if hit is not None and torch.is_grad_enabled() and _caller_symbol(sys._getframe(1)) == hit[1]:
                    return hit[0](*args, **kwargs)
                return func(*args, **kwargs)

        self._mode = _Mode()

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def _caller_symbol(frame) -> Optional[str]:
    """The augmented-assignment symbol the first frame outside any mode's __torch_function__ runs."""
    while frame is not None:
        if frame.f_code.co_name != "__torch_function__":
            return augmented_symbol(frame.f_code.co_code, frame.f_lasti)
        frame = frame.f_back
    return None
