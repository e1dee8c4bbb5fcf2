"""Images for the tests, importable by name (a test that imports `conftest` may get
tests/integration/conftest.py instead, when pytest has loaded both)."""
import torch


def smooth_image(height=64, width=64, seed=0):
    """A smooth natural-ish test image on the 8-bit grid, (1, 3, H, W)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(height, width), mode="bilinear")
    return (x * 255).round() / 255


def _grid(x):
    return (x.clamp(0, 1) * 255).round() / 255


def texture(height=64, width=64, seed=0, strength=0.2):
    """Busy natural-looking texture (foliage, brushwork): octaves of bilinear noise around a
    random colour, (1, 3, H, W) before rounding."""
    g = torch.Generator().manual_seed(seed)
    grain = torch.zeros(1, 1, height, width)
    for cell, weight in ((1, 0.5), (2, 0.8), (4, 1.0)):
        coarse = torch.rand(1, 1, max(height // cell, 1), max(width // cell, 1), generator=g) - 0.5
        grain += weight * torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    grain = (grain - grain.mean()) / grain.std()
    colour = 0.3 + 0.4 * torch.rand(1, 3, 1, 1, generator=g)
    tint = 0.7 + 0.6 * torch.rand(1, 3, 1, 1, generator=g)
    return colour + strength * grain * tint


def gradient(height=64, width=64, seed=0):
    """A smooth mid-tone gradient (sky, skin), (1, 3, H, W) before rounding."""
    g = torch.Generator().manual_seed(seed)
    top, bottom = 0.35 + 0.3 * torch.rand(2, 1, 3, 1, 1, generator=g)
    t = torch.linspace(0, 1, height).view(1, 1, -1, 1)
    return (top + (bottom - top) * t).expand(1, 3, height, width)


def half_flat_half_texture(height=64, width=64, seed=0):
    """Left half a smooth mid-tone gradient, right half busy texture, on the 8-bit grid."""
    half = width // 2
    return _grid(torch.cat([gradient(height, half, seed), texture(height, width - half, seed + 1)], dim=-1))


def natural_scene(height=64, width=64, seed=0):
    """A generated scene: gradient sky above, a flat wall and a textured field below."""
    g = torch.Generator().manual_seed(seed)
    x = gradient(height, width, seed).clone()
    horizon = height // 3 + int(torch.randint(0, max(height // 6, 1), (1,), generator=g))
    wall = int(width * (0.3 + 0.3 * torch.rand(1, generator=g).item()))
    x[..., horizon:, :wall] = (0.2 + 0.6 * torch.rand(1, 3, 1, 1, generator=g))
    x[..., horizon:, wall:] = texture(height - horizon, width - wall, seed + 7)
    return _grid(x)
