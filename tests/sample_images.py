"""Images for the tests, importable by name (a test that imports `conftest` may get
tests/integration/conftest.py instead, when pytest has loaded both)."""
import torch


def smooth_image(height=64, width=64, seed=0):
    """A smooth natural-ish test image on the 8-bit grid, (1, 3, H, W)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(height, width), mode="bilinear")
    return (x * 255).round() / 255
