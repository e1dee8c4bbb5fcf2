"""input_grad_only(): frozen convolutions keep no activations for backward, gradients unchanged."""
import torch
import torch.nn.functional as F

from advdm.models import builtin
from advdm.models.draws import Draws
from advdm.models.frozen import input_grad_only
from advdm.attack.objectives import advdm
from sample_images import smooth_image


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.GroupNorm(4, 16), torch.nn.SiLU(),
        torch.nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=2), torch.nn.Flatten(2),
        torch.nn.Linear(16 * 16, 8),
    )


def _saved_activation_bytes(net, x):
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    kept = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    return out, sum(kept.values())


def test_frozen_layers_save_less_and_give_the_same_input_gradient():
    net = _net().requires_grad_(False)
    x0 = torch.rand(1, 3, 32, 32)
    x = x0.clone().requires_grad_(True)
    out, plain_bytes = _saved_activation_bytes(net, x)
    (plain,) = torch.autograd.grad(out.pow(2).sum(), x)
    x = x0.clone().requires_grad_(True)
    with input_grad_only():
        out, lean_bytes = _saved_activation_bytes(net, x)
        (lean,) = torch.autograd.grad(out.pow(2).sum(), x)
    torch.testing.assert_close(lean, plain, rtol=1e-5, atol=1e-6)
    # the two convolutions' inputs (3x32x32 + 16x32x32 floats) are no longer kept
    assert plain_bytes - lean_bytes == 4 * (3 * 32 * 32 + 16 * 32 * 32)


def test_layers_that_train_are_left_alone():
    net = _net()
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    with input_grad_only():
        net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_string_padding_and_no_grad_run_unchanged():
    w = torch.randn(4, 3, 3, 3)
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    (plain,) = torch.autograd.grad(F.conv2d(x, w, padding="same").square().sum(), x)
    with input_grad_only():
        (lean,) = torch.autograd.grad(F.conv2d(x, w, padding="same").square().sum(), x)
        with torch.no_grad():
            assert not F.conv2d(x, w).requires_grad
    torch.testing.assert_close(lean, plain)


def test_objective_gradient_on_a_model_is_unchanged():
    model = builtin.build("tiny")
    image = smooth_image()

    def grad(lean):
        x = image.clone().requires_grad_(True)
        objective = advdm(model, samples=2)
        if lean:
            with input_grad_only():
                return torch.autograd.grad(objective(x, Draws(model, 3)), x)[0]
        return torch.autograd.grad(objective(x, Draws(model, 3)), x)[0]

    torch.testing.assert_close(grad(True), grad(False), rtol=1e-4, atol=1e-7)


def _objective_saved_bytes(model, config):
    from advdm.attack.pgd import _for_attack

    model = _for_attack(model, config)
    kept = {}

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):  # weights are resident anyway
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = smooth_image(64, 64).requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = advdm(model)(x, Draws(model, 0))
    return value, sum(kept.values())


def test_low_memory_keeps_no_encoder_activations_and_changes_no_pixel():
    from advdm import ProtectConfig, protect

    model = builtin.build("tiny")
    value, kept = _objective_saved_bytes(model, ProtectConfig())
    value_low, kept_low = _objective_saved_bytes(model, ProtectConfig(low_memory=True))
    assert torch.equal(value_low.detach(), value.detach())
    # the encoder's first activation alone (its conv_in output at 64x64) is gone
    assert kept - kept_low > 4 * 64 * 64 * 8
    image = smooth_image()
    assert torch.equal(protect(model, image, ProtectConfig(epsilon=8, steps=3)),
                       protect(model, image, ProtectConfig(epsilon=8, steps=3, low_memory=True)))
