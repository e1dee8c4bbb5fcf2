"""The optimiser and the objectives on the builtin tiny model (random weights: these check
the machinery, not protection strength)."""
import pytest
import torch

from advdm import ProtectConfig, protect
from advdm.models import builtin
from advdm.evaluation.measure import fixed_loss, noise_control
from sample_images import smooth_image


def test_advdm_raises_the_loss_on_fresh_samples_above_clean_and_noise(tiny):
    image = smooth_image()
    protected = protect(tiny, image, ProtectConfig(epsilon=8, steps=100, seed=0))
    # fresh (t, noise) samples: a seed the attack never drew from
    clean = fixed_loss(tiny, image, samples=64, seed=999)
    prot = fixed_loss(tiny, protected, samples=64, seed=999)
    noisy = fixed_loss(tiny, noise_control(image, 8), samples=64, seed=999)
    assert prot - clean > 0.003
    assert prot - clean > 10 * abs(noisy - clean)


def test_loss_rises_with_steps(tiny):
    image = smooth_image(seed=1)
    losses = [
        fixed_loss(tiny, protect(tiny, image, ProtectConfig(epsilon=8, steps=n, samples=4)), samples=64, seed=7)
        for n in (0, 20, 80)
    ]
    assert losses[0] < losses[1] < losses[2]


@pytest.mark.parametrize("epsilon", [1, 4, 7.5])
def test_budget_holds_on_the_8bit_grid(tiny, epsilon):
    image = smooth_image(19, 27)
    out = protect(tiny, image, ProtectConfig(epsilon=epsilon, step_size=2, steps=3))
    k = out * 255
    assert torch.equal(k, k.round()), "output must be exactly k/255"
    assert out.shape == image.shape
    assert ((out - image).abs() * 255).round().max() <= int(epsilon)
    assert ((out - image).abs() * 255).round().max() == int(epsilon)  # the budget is used
    assert out.min() >= 0 and out.max() <= 1


def test_budget_on_16bit_grid(tiny):
    image = (smooth_image(16, 16) * 65535).round() / 65535
    out = protect(tiny, image, ProtectConfig(epsilon=4, steps=2), levels=65535)
    assert torch.equal(out * 65535, (out * 65535).round())
    assert ((out - image).abs() * 65535).round().max() <= 4 * 65535 // 255


def test_same_seed_same_pixels_other_seed_other_pixels(tiny):
    image = smooth_image()
    a = protect(tiny, image, ProtectConfig(steps=3, seed=5))
    b = protect(tiny, image, ProtectConfig(steps=3, seed=5))
    c = protect(tiny, image, ProtectConfig(steps=3, seed=6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_odd_sizes_keep_their_size(tiny):
    for h, w in [(1, 1), (7, 13), (33, 9)]:
        image = smooth_image(h, w)
        assert protect(tiny, image, ProtectConfig(steps=1)).shape == (1, 3, h, w)


def test_mask_keeps_unmasked_pixels(tiny):
    image = smooth_image()
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:40, 8:60] = 1
    out = protect(tiny, image, ProtectConfig(epsilon=8, steps=5), mask=mask)
    changed = (out != image).any(dim=1, keepdim=True)
    assert not changed[mask == 0].any()
    assert changed[mask == 1].float().mean() > 0.5


@pytest.mark.parametrize("method", ["mist", "photoguard", "sds"])
def test_family_methods_change_pixels_within_budget(tiny, method):
    image = smooth_image()
    out = protect(tiny, image, ProtectConfig(method=method, epsilon=6, steps=4))
    delta = ((out - image).abs() * 255).round()
    assert 0 < delta.max() <= 6


def test_photoguard_pulls_the_latent_towards_grey(tiny):
    image = smooth_image()
    target = tiny.encode(torch.full_like(image, 0.5)).mean
    out = protect(tiny, image, ProtectConfig(method="photoguard", epsilon=8, steps=20))
    with torch.no_grad():
        before = (tiny.encode(image).mean - target).norm()
        after = (tiny.encode(out).mean - target).norm()
    assert after < before * 0.98


def _tiny_parts():
    from advdm.models.diffusers_model import unet_model

    unet, vae, cond = builtin.tiny_parts("tiny")
    return unet, vae, unet_model(unet, vae, cond, builtin.scaled_linear_alphas_cumprod(), "eps", 4.0)


def test_sds_runs_no_denoiser_backward():
    unet, vae, model = _tiny_parts()
    calls = {"unet": 0, "vae": 0}

    def count(name):
        return lambda *args: calls.__setitem__(name, calls[name] + 1)

    unet.conv_out.register_full_backward_hook(count("unet"))
    vae.encoder.register_full_backward_hook(count("vae"))
    protect(model, smooth_image(), ProtectConfig(method="sds", steps=2))
    assert calls == {"unet": 0, "vae": 2}
    protect(model, smooth_image(), ProtectConfig(method="advdm", steps=2))
    assert calls == {"unet": 2, "vae": 4}


def test_no_parameter_gradients_accumulate():
    unet, vae, model = _tiny_parts()
    protect(model, smooth_image(), ProtectConfig(steps=2))
    assert all(p.grad is None for p in [*unet.parameters(), *vae.parameters()])


def test_runs_inside_inference_mode(tiny):
    """Hosts (ComfyUI) call nodes under torch.inference_mode()."""
    image = smooth_image()
    with torch.inference_mode():
        out = protect(tiny, image.clone(), ProtectConfig(steps=2))
    assert torch.equal(out, protect(tiny, image, ProtectConfig(steps=2)))


def test_progress_callback_and_cancel(tiny):
    seen = []

    class Cancel(Exception):
        pass

    def progress(step, total, current):
        seen.append((step, total))
        assert current.shape == (1, 3, 64, 64)
        if step == 3:
            raise Cancel

    with pytest.raises(Cancel):
        protect(tiny, smooth_image(), ProtectConfig(steps=10), progress=progress)
    assert seen == [(1, 10), (2, 10), (3, 10)]


@pytest.mark.parametrize("bad", [dict(method="nope"), dict(epsilon=0), dict(epsilon=300), dict(step_size=-1),
                                 dict(samples=0), dict(t_min=0.5, t_max=0.5)])
def test_bad_settings_are_refused(tiny, bad):
    with pytest.raises(ValueError):
        protect(tiny, smooth_image(8, 8), ProtectConfig(**bad))
