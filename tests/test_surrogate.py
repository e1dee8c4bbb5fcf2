"""Fine-tune-aware protection (advdm/attack/surrogate.py) and ACE, on the builtin tiny model: the
surrogate really learns the image and the attack really goes through it, progress counts its
steps, a seed gives the same pixels, and the network is bit-identical afterwards - also when
the user cancels during a fine-tuning phase."""
import dataclasses

import pytest
import torch

from advdm import ProtectConfig, protect
from advdm.models.draws import Draws
from advdm.evaluation.measure import fixed_loss
from advdm.models.interface import network_output, noised
from advdm.attack.texture import target_texture
from advdm.attack.surrogate import surrogate

from sample_images import smooth_image
from test_lora import assert_as_before, snapshot

pytestmark = pytest.mark.usefixtures("single_thread")

QUICK = dict(epsilon=16, step_size=2, steps=4, surrogate_every=2, surrogate_steps=2, surrogate_lr=1e-2)


@pytest.mark.parametrize("prediction", ["eps", "v", "flow"])
def test_network_output_is_what_each_family_predicts(prediction):
    g = torch.Generator().manual_seed(0)
    z, n = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    sigma = torch.tensor([0.05, 1.0, 0.9 if prediction == "flow" else 14.0])
    x = noised(prediction, z, sigma, n)
    s = sigma.view(-1, 1, 1, 1)
    expected = {"eps": n, "flow": n - z,
                "v": (n - s * z) / (1 + s**2).sqrt()}[prediction]  # v = a n - b z, a = 1/sqrt(1+s^2), b = s a
    torch.testing.assert_close(network_output(prediction, x, sigma, z), expected, atol=1e-4, rtol=1e-4)


def distance_to_target(model, image, seed=5, samples=16):
    """Mean squared distance of the network's prediction to the target texture's latent."""
    draws = Draws(model, seed)
    with torch.no_grad():
        z = model.encode(image).mean
        target = model.encode(target_texture(*image.shape[-2:])).mean
        sigma, noise = draws.sigmas(samples), draws.normal((samples, *z.shape[1:]))
        x = noised(model.prediction, z.expand_as(noise), sigma, noise)
        return (network_output(model.prediction, x, sigma, model.denoise(x, sigma)) - target).pow(2).mean().item()


def test_ace_pulls_the_prediction_towards_its_target(tiny):
    x = smooth_image(32, 32)
    y = protect(tiny, x, ProtectConfig(method="ace", epsilon=16, step_size=2, steps=10))
    assert (y - x).abs().max() * 255 <= 16 + 1e-3
    # on draws the attack never used
    assert distance_to_target(tiny, y) < distance_to_target(tiny, x) - 1e-3


def test_the_surrogate_learns_the_image_and_leaves_the_network_as_it_was(tiny):
    net = tiny.denoiser_network
    before = snapshot(net)
    x = smooth_image(32, 32)
    base = fixed_loss(tiny, x, samples=32)
    with surrogate(tiny, every=2, steps=10, rank=4, lr=1e-2, seed=0) as s:
        s.learn(x)
        s.learn(x)
        fitted = fixed_loss(tiny, x, samples=32)  # through the adapters
        assert all(not p.requires_grad for p in s.params)  # the attack's steps keep nothing for them
        assert len(s.losses) == 20 and s.phases == 2
    assert fitted < 0.97 * base
    assert_as_before(net, before)
    assert fixed_loss(tiny, x, samples=32) == base


def test_fine_tune_aware_protect_goes_through_the_surrogate_counts_its_steps_and_repeats(tiny):
    net = tiny.denoiser_network
    before = snapshot(net)
    x = smooth_image(24, 40)
    config = ProtectConfig(method="anti-dreambooth", **QUICK)
    assert config.surrogate and config.progress_steps == 4 + 2 * 2
    calls = []
    y = protect(tiny, x, config, progress=lambda done, total, current: calls.append((done, total, current.shape)))
    assert calls == [(i, 8, x.shape) for i in range(1, 9)]
    assert y.shape == x.shape and (y - x).abs().max() * 255 <= 16 + 1e-3
    assert_as_before(net, before)
    assert torch.equal(protect(tiny, x, config), y)
    # same seed, same draws: AdvDM differs only by the surrogate the gradient went through
    plain = protect(tiny, x, dataclasses.replace(config, surrogate=False))
    assert not torch.equal(plain, y)
    assert torch.equal(plain, protect(tiny, x, ProtectConfig(method="advdm", **QUICK)))


def test_cancel_during_fine_tuning_restores_the_network(tiny):
    net = tiny.denoiser_network
    before = snapshot(net)

    def cancel(done, total, current):
        if done == 1:  # the first fine-tuning step, before any PGD step
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        protect(tiny, smooth_image(16, 16), ProtectConfig(method="mist-v2", **QUICK), progress=cancel)
    assert_as_before(net, before)


def test_surrogate_settings_are_checked_and_saved_only_when_used(tiny):
    with pytest.raises(ValueError, match="surrogate_every"):
        ProtectConfig(method="anti-dreambooth", surrogate_every=0)
    with pytest.raises(ValueError, match="surrogate_lr"):
        ProtectConfig(method="mist-v2", surrogate_lr=0)
    with pytest.raises(ValueError, match="photoguard"):
        ProtectConfig(method="photoguard", surrogate=True)
    assert "surrogate_every" not in ProtectConfig(method="advdm").as_dict()  # old batch hashes still hold
    assert ProtectConfig(method="advdm", surrogate=True).as_dict()["surrogate_every"] == 10
    with pytest.raises(ValueError, match="denoiser network"):
        protect(dataclasses.replace(tiny, denoiser_network=None), smooth_image(16, 16),
                ProtectConfig(method="anti-dreambooth", **QUICK))


@pytest.mark.parametrize("name", ["tiny-sd2v", "tiny-sdxl", "tiny-sd3", "tiny-flux"])
def test_every_family_trains_its_surrogate_and_is_restored(name):
    from advdm.models import builtin

    model = builtin.build(name)
    net = model.denoiser_network
    before = snapshot(net)
    x = smooth_image(32, 32)
    config = ProtectConfig(method="mist-v2", **QUICK)
    y = protect(model, x, config)
    assert y.shape == x.shape and (y - x).abs().max() * 255 <= 16 + 1e-3
    assert not torch.equal(y, protect(model, x, dataclasses.replace(config, surrogate=False)))  # it went through the LoRA
    assert_as_before(net, before)
