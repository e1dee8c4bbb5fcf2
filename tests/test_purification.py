"""The cleanups of the robustness table: the DiffPure sampler is exact for an exact
denoiser, the filters really remove a high-frequency perturbation, and the table has
their rows with intervals (or says why a row is missing)."""
from dataclasses import replace

import torch

from advdm.mimic import purification
from advdm.evaluation.robustness import format_robustness, robustness
from advdm.models.interface import Latent
from sample_images import smooth_image


def test_diffpure_with_an_exact_denoiser_returns_the_decoded_latent(tiny):
    """With D(x, sigma) = z (the denoiser knows the answer), every Euler step of
    dx/dsigma = (x - D) / sigma keeps x on the line from z to the noise and ends on z."""
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    seen = []

    def oracle(x, sigma):
        seen.append(sigma.item())
        return z.expand_as(x)

    for prediction in ("eps", "flow"):
        seen.clear()
        model = replace(tiny, encode=lambda px: Latent(z), denoise=oracle, decode=lambda lat: lat[:, :3],
                        prediction=prediction)
        out = purification.diffpure(model, torch.zeros(1, 3, 8, 8), 0.3, steps=3)
        assert torch.allclose(out, z[:, :3].clamp(0, 1), atol=1e-5)
        assert len(seen) == 3 and seen == sorted(seen, reverse=True)


def test_diffpure_is_seeded_and_keeps_the_size(tiny):
    image = smooth_image(36, 28)
    a = purification.diffpure(tiny, image, 0.1, seed=1)
    assert a.shape == image.shape and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, purification.diffpure(tiny, image, 0.1, seed=1))
    assert not torch.equal(a, purification.diffpure(tiny, image, 0.1, seed=2))


def _checkered(image, amplitude=8 / 255):
    h, w = image.shape[-2:]
    sign = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 * 2 - 1
    return (image + amplitude * sign).clamp(0, 1)


def test_the_filters_strip_a_high_frequency_perturbation():
    """What is left of the perturbation: the cleaned attacked image against the cleaned clean one."""
    image = smooth_image(48, 48)
    attacked = _checkered(image)
    before = (attacked - image).abs().mean()
    for clean in (purification.adverse_clean, lambda x: purification.noisy_upscale(x, std=0.0)):
        assert (clean(attacked) - clean(image)).abs().mean() < 0.5 * before
    noisy = purification.noisy_upscale(image, seed=3)
    assert torch.equal(noisy, purification.noisy_upscale(image, seed=3)) and noisy.shape == image.shape


def test_the_table_has_the_purification_rows_with_intervals(tiny):
    image = smooth_image(24, 24)
    attacked = _checkered(image, 4 / 255)
    names = ["diffpure t*=0.1 (4 steps)", "noisy upscale x2", "bilateral + guided"]
    res = robustness(tiny, image, attacked, samples=2, max_samples=2, transforms=names)
    for name in names:
        r = res[name]
        assert r["size"] == (24, 24) and r["samples"] == 2
        assert r["gain_low"] <= r["gain"] <= r["gain_high"] and r["gain_noise_low"] <= r["gain_noise"] <= r["gain_noise_high"]
    text = format_robustness(res)
    assert all(n in text for n in names) and "[" in text
    blind = robustness(replace(tiny, decode=None), image, attacked, samples=2, max_samples=2, transforms=names[:1])
    assert blind[names[0]] == {"skipped": "the model has no decoder here"}
    assert "skipped: the model has no decoder here" in format_robustness(blind)
