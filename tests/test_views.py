"""Views (full / train / tiled / auto) and the EOT chain, on the builtin tiny model."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from advdm import ProtectConfig, protect
from advdm.models.draws import Draws
from advdm.attack.eot import EOT, gaussian_blur, jpeg
from advdm.mimic.views import Views, bucket_size, tile_starts
from sample_images import smooth_image


def _views(model, size, **kw):
    config = ProtectConfig(**kw)
    return Views(model, config, size, EOT.from_config(config))


def test_auto_picks_full_for_small_and_train_for_large(tiny):
    r = tiny.train_resolution
    assert _views(tiny, (r, int(1.5 * r))).mode == "full"
    assert _views(tiny, (r, int(1.5 * r) + 8)).mode == "train"
    assert _views(tiny, (4 * r, 4 * r), resolution=r // 2).mode == "train"
    with pytest.raises(ValueError):
        ProtectConfig(view="squash")
    with pytest.raises(ValueError):
        ProtectConfig(crop_min=0)
    with pytest.raises(ValueError):
        ProtectConfig(eot_jpeg=100)


def test_train_views_are_differentiable_to_native_pixels_and_sized_by_r(tiny):
    views = _views(tiny, (300, 500), view="train", resolution=64, views_per_step=8, flip=True, eot_jpeg=50,
                   eot_blur=1.0, eot_noise=4.0, eot_prob=1.0)
    draws = Draws(tiny, 0)
    x = torch.rand(1, 3, 300, 500, requires_grad=True)
    shapes = set()
    for view in views.sample(draws):
        v = view(x)
        shapes.add(tuple(v.shape[-2:]))
        assert v.shape[-2] * v.shape[-1] <= 1.3 * 64 * 64
        assert v.shape[-2] % tiny.pixel_multiple == 0 and v.shape[-1] % tiny.pixel_multiple == 0
        (g,) = torch.autograd.grad(v.sum(), x)
        assert g.shape == x.shape and g.abs().sum() > 0
    assert (64, 64) in shapes  # square crops
    assert bucket_size(300, 500, 64, 8) in shapes  # the aspect bucket
    assert bucket_size(300, 500, 64, 8) == (48, 80)


def test_work_per_step_does_not_grow_with_image_size(tiny):
    """The encoder sees R x R (or the R^2 bucket) whatever the native size."""
    seen = []
    encode = tiny.encode

    def spy(pixels):
        seen.append(tuple(pixels.shape[-2:]))
        return encode(pixels)

    model = type(tiny)(**{**tiny.__dict__, "encode": spy})
    for side in (256, 1024):
        seen.clear()
        out = protect(model, smooth_image(side, side), ProtectConfig(view="train", resolution=32, steps=3, epsilon=4))
        assert out.shape == (1, 3, side, side)
        assert seen and all(s == (32, 32) for s in seen)


def test_tiles_cover_the_image_and_overlap(tiny):
    assert tile_starts(100, 128) == [0]
    starts = tile_starts(300, 64)
    assert starts[0] == 0 and starts[-1] == 300 - 64
    assert all(b - a < 64 for a, b in zip(starts, starts[1:]))
    views = _views(tiny, (100, 150), view="tiled", resolution=64)
    covered = torch.zeros(100, 150)
    for top, left, h, w in views.tiles:
        covered[top:top + h, left:left + w] = 1
    assert covered.all()
    x = torch.rand(1, 3, 100, 150, requires_grad=True)
    grads = [torch.autograd.grad(v(x).sum(), x)[0] for v in views.sample(Draws(tiny, 0))]
    assert (sum(g.abs() for g in grads) > 0).all()


@pytest.mark.parametrize("view", ["train", "tiled", "full"])
def test_output_keeps_native_size_budget_and_seed(tiny, view):
    image = smooth_image(70, 45, seed=3)
    eot = dict(eot_jpeg=60, eot_noise=2) if view == "train" else {}
    cfg = dict(view=view, resolution=32, steps=2, epsilon=6, step_size=3, **eot)
    a = protect(tiny, image, ProtectConfig(seed=1, **cfg))
    b = protect(tiny, image, ProtectConfig(seed=1, **cfg))
    c = protect(tiny, image, ProtectConfig(seed=2, **cfg))
    assert a.shape == image.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert ((a - image).abs() * 255).round().max() == 6
    assert torch.equal(a * 255, (a * 255).round())


def test_full_mode_draws_nothing_extra():
    """"full" without EOT leaves the generator to the objective, as before views existed."""
    from advdm.models import builtin

    model = builtin.build("tiny")
    views = _views(model, (64, 64), view="full")
    draws = Draws(model, 0)
    before = draws.generator.get_state().clone()
    views.sample(draws)
    assert torch.equal(before, draws.generator.get_state())


def _pil_jpeg(x, q):
    arr = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=q)
    return torch.from_numpy(np.asarray(Image.open(buf), dtype=np.float32) / 255).permute(2, 0, 1)[None]


@pytest.mark.parametrize("quality", [95, 75, 40])
def test_differentiable_jpeg_is_close_to_pil(quality):
    g = torch.Generator().manual_seed(0)
    x = (smooth_image(72, 56, seed=4) + 0.04 * torch.randn(1, 3, 72, 56, generator=g)).clamp(0, 1)
    x = (x * 255).round() / 255
    real = _pil_jpeg(x, quality)
    approx = jpeg(x, quality)
    err_approx = (approx - real).abs().mean() * 255
    err_identity = (x - real).abs().mean() * 255
    assert approx.shape == x.shape
    assert err_approx < 0.35 * err_identity, (err_approx, err_identity)
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(jpeg(x, quality).sum(), x)
    assert grad.abs().sum() > 0


def test_blur_and_eot_draws_reproduce():
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(gaussian_blur(x, 1.0).mean(), x.mean(), atol=0.02)
    assert gaussian_blur(x, 1.0).std() < x.std()
    eot = EOT(jpeg_quality=50, blur=1.0, noise=4.0, prob=1.0)
    a = eot.draw(torch.Generator().manual_seed(3), (32, 32))(x)
    b = eot.draw(torch.Generator().manual_seed(3), (32, 32))(x)
    assert torch.equal(a, b) and not torch.equal(a, x)
