"""The host-neutral tensor handling every adapter uses (advdm/host_tensors.py).

The augmented-assignment guard is tested on this interpreter and, in a subprocess, on Python
3.10 (which compiles `x += y` to INPLACE_ADD, not BINARY_OP): CI's Python is 3.11, so the 3.10
run uses the first 3.10 interpreter found ($ADVDM_PYTHON310, $FORGE_PY, python3.10, pyenv's)
and is skipped when there is none; with torch it runs the guard end to end, without torch it
checks the opcode decoding on bytecode 3.10 compiled.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from advdm import host_tensors as ht
from advdm.frozen import input_grad_only

REPO = Path(__file__).resolve().parents[1]


def test_make_trainable_copies_allows_backward_and_keeps_values():
    with torch.inference_mode():
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
        x_inf = torch.rand(1, 3, 8, 8)
    before = [p.clone() for p in net.parameters()]
    assert all(p.is_inference() and p.requires_grad for p in net.parameters())
    with torch.inference_mode(False), torch.enable_grad():
        counts = ht.make_trainable_copies([net])
        assert counts["parameters"] == 4 and counts["buffers"] >= 2
        x = x_inf.clone().requires_grad_(True)
        with ht.frozen([net]):
            net(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for p, q in zip(net.parameters(), before):
        assert not p.is_inference() and p.requires_grad and torch.equal(p, q)  # the flag as it was
        assert p.grad is None
    with torch.inference_mode():  # sampling afterwards still works
        net(torch.rand(1, 3, 8, 8))


def test_make_trainable_copies_refuses_inference_mode():
    with torch.inference_mode():
        with pytest.raises(RuntimeError):
            ht.make_trainable_copies([torch.nn.Linear(2, 2)])


def test_frozen_restores_flags():
    net = torch.nn.Linear(2, 2)
    with ht.frozen([net]):
        assert not any(p.requires_grad for p in net.parameters())
    assert all(p.requires_grad for p in net.parameters())


def test_frozen_restores_flags_of_inference_parameters():
    """A host may hand over (or turn back into) inference-tensor parameters, some with
    requires_grad True: toggling those outside inference mode raises, so frozen must not."""
    with torch.inference_mode():
        net = torch.nn.Linear(2, 2)  # built in inference mode: requires_grad True, inference tensors
        frozen_one = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    net.register_parameter("extra", frozen_one)
    assert all(p.is_inference() for p in net.parameters())
    with ht.frozen([net]):
        assert not any(p.requires_grad for p in net.parameters())
    assert net.weight.requires_grad and net.bias.requires_grad and not net.extra.requires_grad


def test_ordinary_clones_nested_inference_tensors():
    with torch.inference_mode():
        cond = [[torch.randn(1, 4, 8), {"pooled_output": torch.randn(1, 8), "x": 1}]]
    out = ht.ordinary(cond)
    assert not out[0][0].is_inference() and not out[0][1]["pooled_output"].is_inference()
    assert out[0][1]["x"] == 1


# --- augmented assignment ----------------------------------------------------------------

def _residual_block(norm):
    def block(x):
        y = norm(x) * 2
        x += y
        z = torch.zeros(2, 4)
        z.add_(1.0)  # a statement: must stay in place
        return x + z

    return block


@pytest.mark.parametrize("core_mode_inside", [False, True])
def test_augmented_assignment_runs_out_of_place_for_backward(core_mode_inside):
    """Residual updates `x += f(norm(x))` (Flux in ComfyUI, Forge's UNet): under the guard the
    backward works and is exact, while explicit in-place calls keep their in-place effect. Also
    with the attack's own TorchFunctionMode (frozen.input_grad_only) entered inside the guard."""
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(4)
    block = _residual_block(norm)
    x0 = torch.randn(2, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="inplace"):
        block(x0 * 1).sum().backward()
    with ht.AugmentedAssignOutOfPlace(), input_grad_only() if core_mode_inside else contextlib.nullcontext():
        out = block(x0 * 1)
        out.sum().backward()
    x1 = x0.detach().clone().requires_grad_(True)
    ref = x1 + norm(x1) * 2 + 1
    ref.sum().backward()
    assert torch.allclose(out, ref) and torch.allclose(x0.grad, x1.grad)


def test_augmented_symbol_on_this_interpreter():
    def f(x, y):
        x += y
        x -= y
        x *= y
        x /= y
        x = x + y
        return x

    import dis

    found = [ht.augmented_symbol(f.__code__.co_code, ins.offset) for ins in dis.get_instructions(f)]
    assert [s for s in found if s] == ["+=", "-=", "*=", "/="]


def _python310(need_torch: bool):
    candidates = [os.environ.get("ADVDM_PYTHON310"), os.environ.get("FORGE_PY"), shutil.which("python3.10")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python")))
    probe = "import sys; assert sys.version_info[:2] == (3, 10)" + ("; import torch" if need_torch else "")
    for c in candidates:
        if c and os.path.exists(c) and subprocess.run([c, "-c", probe], capture_output=True).returncode == 0:
            return c
    pytest.skip("no Python 3.10 interpreter" + (" with torch" if need_torch else "") +
                " (set ADVDM_PYTHON310 or FORGE_PY)")


PY310_GUARD = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
from advdm.host_tensors import AugmentedAssignOutOfPlace
torch.manual_seed(0)
norm = torch.nn.LayerNorm(4)
def block(x):
    y = norm(x) * 2
    x += y
    z = torch.zeros(2, 4)
    z.add_(1.0)
    return x + z
x0 = torch.randn(2, 4, requires_grad=True)
try:
    block(x0 * 1).sum().backward()
    raise SystemExit("the unguarded block did not fail: the test would prove nothing")
except RuntimeError as e:
    assert "inplace" in str(e), e
with AugmentedAssignOutOfPlace():
    out = block(x0 * 1)
    out.sum().backward()
x1 = x0.detach().clone().requires_grad_(True)
ref = x1 + norm(x1) * 2 + 1
ref.sum().backward()
assert torch.allclose(out, ref) and torch.allclose(x0.grad, x1.grad), "wrong result"
print("3.10 guard ok", sys.version.split()[0], torch.__version__)
"""


def test_augmented_assignment_guard_on_python310():
    """The guard end to end on Python 3.10 (INPLACE_ADD bytecode), in a 3.10 interpreter with torch."""
    py = _python310(need_torch=True)
    r = subprocess.run([py, "-c", PY310_GUARD, str(REPO)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3.10 guard ok" in r.stdout


PY310_BYTECODE = r"""
import dis, json
def f(x, y):
    x += y
    x -= y
    x *= y
    x /= y
    x = x + y
    x.add_(y)
    return x
print(json.dumps({"code": list(f.__code__.co_code), "offsets": [i.offset for i in dis.get_instructions(f)],
                  "opmap": dis.opmap}))
"""


def test_augmented_symbol_on_python310_bytecode():
    """The opcode decoding on bytecode a 3.10 interpreter compiled (no torch needed there)."""
    py = _python310(need_torch=False)
    out = json.loads(subprocess.run([py, "-c", PY310_BYTECODE], capture_output=True, text=True, check=True).stdout)
    code = bytes(out["code"])
    found = [ht.augmented_symbol(code, i, opmap=out["opmap"], nb_ops=[]) for i in out["offsets"]]
    assert [s for s in found if s] == ["+=", "-=", "*=", "/="]
