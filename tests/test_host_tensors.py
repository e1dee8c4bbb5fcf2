"""The host-neutral tensor handling every adapter uses (advdm/models/host_tensors.py).

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

from advdm.models import host_tensors as ht
from advdm.models.frozen import input_grad_only

import guard_check  # tests/guard_check.py (pytest puts tests/ on sys.path)

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


def test_a_parameter_two_modules_register_stays_one_copy():
    """Forge's CLIPEmbeddingForTextualInversion registers its wrapped table's weight as its own:
    one copy for both, so they stay the same tensor (and memory grows by one table, not two)."""
    with torch.inference_mode():
        table = torch.nn.Embedding(10, 4)
        wrapper = torch.nn.Module()
        wrapper.wrapped, wrapper.weight = table, table.weight
    counts = ht.make_trainable_copies([wrapper])
    assert counts["parameters"] == 1 and wrapper.weight is table.weight and not table.weight.is_inference()


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

@pytest.mark.parametrize("core_mode_inside", [False, True])
def test_augmented_assignment_runs_out_of_place_for_backward(core_mode_inside):
    """Residual updates `x += f(norm(x))` (Flux in ComfyUI, Forge's UNet): under the guard the
    backward works and is exact, while explicit in-place calls keep their in-place effect. Also
    with the attack's own TorchFunctionMode (frozen.input_grad_only) entered inside the guard."""
    guard_check.check_residual_backward(input_grad_only if core_mode_inside else contextlib.nullcontext)


def _symbols(dump, **kw):
    code = bytes(dump["code"])
    return [s for s in (ht.augmented_symbol(code, i, **kw) for i in dump["offsets"]) if s]


def test_augmented_symbol_on_this_interpreter():
    assert _symbols(guard_check.bytecode()) == ["+=", "-=", "*=", "/="]


def _python310(need_torch: bool):
    candidates = [os.environ.get("ADVDM_PYTHON310"), os.environ.get("FORGE_PY"), shutil.which("python3.10")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python")))
    probe = "import sys; assert sys.version_info[:2] == (3, 10)" + ("; import torch" if need_torch else "")
    for c in candidates:
        if c and os.path.exists(c) and subprocess.run([c, "-c", probe], capture_output=True).returncode == 0:
            return c
    pytest.skip("no Python 3.10 interpreter" + (" with torch" if need_torch else "") +
                " (set ADVDM_PYTHON310 or FORGE_PY)")


def _run310(py, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    return subprocess.run([py, str(REPO / "tests" / "guard_check.py"), *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_augmented_assignment_guard_on_python310():
    """The guard end to end on Python 3.10 (INPLACE_ADD bytecode), in a 3.10 interpreter with torch."""
    r = _run310(_python310(need_torch=True))
    assert r.returncode == 0 and "guard ok 3.10" in r.stdout, r.stdout + r.stderr


def test_augmented_symbol_on_python310_bytecode():
    """The opcode decoding on bytecode a 3.10 interpreter compiled (no torch needed there)."""
    r = _run310(_python310(need_torch=False), "bytecode")
    assert r.returncode == 0, r.stderr
    dump = json.loads(r.stdout)
    assert _symbols(dump, opmap=dump["opmap"], nb_ops=[]) == ["+=", "-=", "*=", "/="]
