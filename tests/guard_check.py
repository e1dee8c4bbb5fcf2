"""The augmented-assignment guard's checks, importable without pytest so a Python 3.10
subprocess can run them too (tests/test_host_tensors.py): `python guard_check.py` runs both."""
from __future__ import annotations

import contextlib
import dis
import json
import sys


def augmented_function(x, y):
    x += y
    x -= y
    x *= y
    x /= y
    x = x + y
    x.add_(y)
    return x


def bytecode() -> dict:
    """augmented_function as this interpreter compiled it, and its opcode table."""
    code = augmented_function.__code__
    return {"code": list(code.co_code), "offsets": [i.offset for i in dis.get_instructions(code)], "opmap": dis.opmap}


def check_residual_backward(inner=contextlib.nullcontext) -> None:
    """`x += f(norm(x))` fails backward unguarded; under the guard (with the `inner` context
    entered inside it) the result and gradient are exact and an explicit `z.add_(1)` stays in place."""
    import torch

    from advdm.models.host_tensors import AugmentedAssignOutOfPlace

    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(4)

    def block(x):
        y = norm(x) * 2
        x += y
        z = torch.zeros(2, 4)
        z.add_(1.0)  # a statement: must stay in place
        return x + z

    x0 = torch.randn(2, 4, requires_grad=True)
    try:
        block(x0 * 1).sum().backward()
        raise AssertionError("the unguarded block did not fail: the check would prove nothing")
    except RuntimeError as e:
        assert "inplace" in str(e), e
    with AugmentedAssignOutOfPlace(), inner():
        out = block(x0 * 1)
        out.sum().backward()
    x1 = x0.detach().clone().requires_grad_(True)
    ref = x1 + norm(x1) * 2 + 1
    ref.sum().backward()
    assert torch.allclose(out, ref) and torch.allclose(x0.grad, x1.grad), "guarded block: wrong result or gradient"


if __name__ == "__main__":
    if sys.argv[1:] == ["bytecode"]:
        print(json.dumps(bytecode()))
    else:
        check_residual_backward()
        print("guard ok", sys.version.split()[0])
