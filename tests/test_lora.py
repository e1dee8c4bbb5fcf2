"""LoRA on a host's denoiser (advdm/mimic/lora.py) and the mimic's fine-tune (advdm/mimic/finetune.py),
on the builtin tiny model: the adapters train, only they get gradients, and on leaving -
also on an exception - the network is bit-identical, with its flags and no hooks left."""
import pytest
import torch

from advdm.evaluation.measure import DrawLosses
from advdm.mimic.finetune import FinetuneConfig, FineTuneDiverged, LossScaler, lora_finetuned, mimic_view, train
from advdm.mimic.lora import lora_adapters

from sample_images import smooth_image

pytestmark = pytest.mark.usefixtures("single_thread")


def snapshot(net):
    return ({k: v.clone() for k, v in net.state_dict().items()},
            [p.requires_grad for p in net.parameters()],
            [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in net.modules()],
            [m.training for m in net.modules()])


def assert_as_before(net, before):
    weights, flags, hooks, modes = before
    after = net.state_dict()
    assert weights.keys() == after.keys()
    assert all(torch.equal(weights[k], after[k]) for k in weights), "weights changed"
    assert [p.requires_grad for p in net.parameters()] == flags
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in net.modules()] == hooks
    assert [m.training for m in net.modules()] == modes


def test_adapters_start_as_identity_train_alone_and_leave_the_network_bit_identical(tiny):
    net = tiny.denoiser_network
    net.conv_in.weight.requires_grad_(True)  # a host's own flag, to be restored as found
    before = snapshot(net)
    x, sigma = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([1.0, 5.0])
    with torch.no_grad():
        plain = tiny.denoise(x, sigma)
    with lora_adapters(net, rank=4, convs=True, seed=0) as params:
        with torch.no_grad():
            assert torch.equal(tiny.denoise(x, sigma), plain)  # B = 0: no change until trained
        assert all(p.requires_grad for p in params)
        assert not any(p.requires_grad for p in net.parameters())
        tiny.denoise(x, sigma).pow(2).mean().backward()
        assert all(p.grad is not None for p in params[1::2])  # B gets gradient first (A's is zero while B = 0)
        assert all(p.grad is None for p in net.parameters())
        with torch.no_grad():
            for p in params[1::2]:
                p.add_(0.01)
            assert not torch.equal(tiny.denoise(x, sigma), plain)
    assert_as_before(net, before)
    with torch.no_grad():
        assert torch.equal(tiny.denoise(x, sigma), plain)
    net.conv_in.weight.requires_grad_(False)


def test_the_network_is_restored_on_an_exception_inside(tiny):
    net = tiny.denoiser_network
    before = snapshot(net)
    with pytest.raises(KeyboardInterrupt):
        with lora_finetuned(tiny, [smooth_image(32, 32)], FinetuneConfig(steps=2, lr=1e-2)):
            raise KeyboardInterrupt
    assert_as_before(net, before)


def test_a_fine_tune_lowers_the_loss_of_its_images_and_changes_no_weight(tiny):
    net = tiny.denoiser_network
    before = snapshot(net)
    images = [smooth_image(32, 32, seed=s) for s in range(2)]
    base = torch.cat([DrawLosses(tiny, x, 0).losses(32) for x in images]).mean()
    seen = []
    with lora_finetuned(tiny, images, FinetuneConfig(steps=15, lr=1e-2), seed=0,
                        progress=lambda done, total: seen.append((done, total))) as tuned:
        tuned_loss = torch.cat([DrawLosses(tuned, x, 0).losses(32) for x in images]).mean()
    assert tuned_loss < 0.9 * base
    assert seen[-1] == (15, 15) and len(seen) == 15
    assert_as_before(net, before)


def test_a_model_without_its_network_is_refused_with_a_reason(tiny):
    from dataclasses import replace

    with pytest.raises(ValueError, match="does not expose its denoiser network"):
        with lora_finetuned(replace(tiny, denoiser_network=None), [smooth_image(32, 32)], FinetuneConfig(steps=1)):
            pass


def test_large_images_are_fitted_to_the_training_area_like_a_fine_tuning_script(tiny):
    assert tuple(mimic_view(tiny, smooth_image(64, 256)).shape[-2:]) == (64, 256)  # 128 px: area within 128^2
    h, w = mimic_view(tiny, smooth_image(200, 400)).shape[-2:]
    assert h % 8 == 0 and w % 8 == 0 and abs(w / h - 2) < 0.2 and h * w <= 1.2 * 128 * 128


def _drop(model, images, config, scaler=None):
    """How much a fine-tune lowers its images' loss over fixed draws, as a fraction of the base loss."""
    base = torch.cat([DrawLosses(model, x, 0).losses(32) for x in images]).mean()
    with lora_adapters(model.denoiser_network, config.rank, config.alpha, config.convs, 0) as params:
        history = train(model, params, images, config, 0, scaler=scaler)
        after = torch.cat([DrawLosses(model, x, 0).losses(32) for x in images]).mean()
    return ((base - after) / base).item(), history, [p.detach().clone() for p in params]


def test_fine_tunes_in_float16_and_bfloat16_learn_as_in_float32():
    """The host's own precision: the network in half precision, the adapters in float32. (On
    the tiny model at 32 px float16's gradients do not underflow even unscaled - the next test
    makes them - so this one guards the half-precision path as a whole.)"""
    from advdm.models import builtin

    images = [smooth_image(32, 32, seed=s) for s in range(2)]
    config = FinetuneConfig(steps=15, lr=1e-2)
    drops = {dtype: _drop(builtin.build("tiny", dtype=dtype), images, config)[0]
             for dtype in (torch.float32, torch.float16, torch.bfloat16)}
    assert drops[torch.float32] > 0.1, drops
    for dtype in (torch.float16, torch.bfloat16):
        assert drops[dtype] == pytest.approx(drops[torch.float32], rel=0.15), drops


def _half_net_gradients(scaler):
    """Adapter gradients of a two-layer float16 network whose loss gradients are about
    1e-9 - below float16's smallest number (6e-8), as a diffusion loss's reach a float16
    UNet at large sizes (about 1e-7 at 512 px, a third of them zero) - and of its float32 twin."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16))
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    grads = {}
    for dtype in (torch.float32, torch.float16):
        net.to(dtype)
        with lora_adapters(net, rank=2, seed=0) as params:
            with torch.no_grad():
                for p in params[1::2]:
                    p.fill_(0.1)
            loss = net(x.to(dtype)).float().sum() * 1e-9
            s = scaler() if dtype == torch.float16 else LossScaler(scale=1.0)
            (loss * s.scale).backward()
            assert s.unscale(params)
            grads[dtype] = [p.grad.clone() for p in params]
    return grads


def test_loss_scaling_keeps_float16_gradients_that_would_underflow():
    grads = _half_net_gradients(LossScaler)
    first_layer = grads[torch.float16][:2]  # reached only through the second layer's float16 backward
    assert all(g.abs().sum() > 0 for g in first_layer)
    for g16, g32 in zip(grads[torch.float16], grads[torch.float32]):
        assert torch.allclose(g16, g32, rtol=1e-2, atol=1e-3 * g32.abs().max().item())
    unscaled = _half_net_gradients(lambda: LossScaler(scale=1.0))
    assert all(g.abs().sum() == 0 for g in unscaled[torch.float16][:2])  # what it guards against


def test_gradients_not_finite_unscaled_are_a_setting_error_naming_the_learning_rate():
    """At scale 1 a non-finite gradient is the fine-tune's own divergence: a ValueError (the API's
    400, the command line's message) that says to lower the learning rate; above 1 the step is redone."""
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([1.0, float("nan"), 0.0])
    scaler = LossScaler(scale=2.0)
    assert not scaler.unscale([p]) and scaler.scale == 1.0 and p.grad is None
    p.grad = torch.tensor([float("inf"), 0.0, 0.0])
    with pytest.raises(ValueError, match="lower learning rate") as caught:
        scaler.unscale([p])
    assert isinstance(caught.value, FineTuneDiverged)


def test_float32_gradients_are_the_same_scaled_or_not_and_an_overflow_redoes_its_step(tiny):
    """Scaling by a power of two is exact: float32 fine-tunes are bit-identical to unscaled
    ones. A scale that overflows float16 is halved and the step redone on the same draws, so a
    float16 fine-tune started at an absurd scale ends where one started at a sane scale does: the
    same losses, and adapters equal to float rounding (the two settle on different powers of two,
    2^20 and 2^16, and float16's backward rounds differently at each: about 2e-9 here)."""
    from advdm.models import builtin

    images = [smooth_image(32, 32, seed=s) for s in range(2)]
    config = FinetuneConfig(steps=4, lr=1e-2)
    _, h_scaled, p_scaled = _drop(tiny, images, config)
    _, h_plain, p_plain = _drop(tiny, images, config, LossScaler(scale=1.0))
    assert h_scaled == h_plain and all(torch.equal(a, b) for a, b in zip(p_scaled, p_plain))
    half = builtin.build("tiny", dtype=torch.float16)
    huge = LossScaler(scale=2.0 ** 40)
    _, h_huge, p_huge = _drop(half, images, config, huge)
    _, h_sane, p_sane = _drop(half, images, config)
    assert huge.scale < 2.0 ** 40 and len(h_huge) == config.steps
    assert h_huge == h_sane and all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(p_huge, p_sane))
