"""Procedural "art styles" for the test-bed: 64x64 RGB textures and strokes, seeded, no
downloads. Each style has its own kind of mark and its own palette family; every image
draws its own parameters (angle, frequency, sizes, colours) from the style's ranges.

    image(style, seed) -> float32 array (64, 64, 3) in [0, 1]
    batch(style, seeds) -> torch tensor (N, 3, 64, 64) in [0, 1], on the 8-bit grid
"""
from __future__ import annotations

import colorsys

import numpy as np

SIZE = 64
SS = 2  # supersampling factor (drawn at 128 px, box-filtered to 64)

# style name -> (generator, palette family: hue range in [0, 1), saturation range, value range)
STYLES = ("stripes", "dots", "strokes", "mosaic", "flow", "rings", "plaid")
# The style train.py leaves out, for bench/mimicry.py (the artist a mimic wants to copy).
HELD_OUT = "mosaic"

PALETTES = {
    "stripes": ((0.95, 1.08), (0.6, 0.95), (0.6, 1.0)),  # reds / oranges
    "dots": ((0.55, 0.68), (0.5, 0.9), (0.35, 0.9)),  # blues (on cream paper)
    "strokes": ((0.22, 0.38), (0.4, 0.85), (0.25, 0.8)),  # greens
    "mosaic": ((0.75, 0.92), (0.45, 0.9), (0.45, 1.0)),  # violets / magentas, dark grout
    "flow": ((0.42, 0.52), (0.5, 0.9), (0.4, 0.95)),  # teals, with yellow streaks
    "rings": ((0.05, 0.13), (0.35, 0.75), (0.3, 0.85)),  # earth browns / ochres
    "plaid": ((0.0, 1.0), (0.15, 0.35), (0.4, 0.8)),  # muted, any hue
}


def _colour(rng, family, jitter=1.0):
    (h0, h1), (s0, s1), (v0, v1) = family
    h = rng.uniform(h0, h1) % 1.0
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(s0, s1) * jitter, rng.uniform(v0, v1)), np.float32)


def _palette(rng, style, n):
    return [_colour(rng, PALETTES[style]) for _ in range(n)]


def _grid(n):
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / n
    return x, y


def _mix(a, b, t):
    t = np.clip(t, 0, 1)[..., None]
    return a * (1 - t) + b * t


def _stripes(rng, n):
    x, y = _grid(n)
    c1, c2, c3 = _palette(rng, "stripes", 3)
    th = rng.uniform(0, np.pi)
    freq = rng.uniform(4, 10)
    u = (x * np.cos(th) + y * np.sin(th)) * freq + rng.uniform(0, 1)
    duty = rng.uniform(0.3, 0.6)
    band = ((u % 1.0) < duty).astype(np.float32)
    alt = ((np.floor(u) % 2) == 0).astype(np.float32)  # alternate the stripe colour
    img = _mix(c1[None, None] * np.ones((n, n, 1), np.float32), _mix(c2, c3, alt), band)
    return img


def _dots(rng, n):
    x, y = _grid(n)
    paper = np.array(colorsys.hsv_to_rgb(rng.uniform(0.08, 0.14), rng.uniform(0.05, 0.2), rng.uniform(0.85, 0.97)), np.float32)
    ink, ink2 = _palette(rng, "dots", 2)
    th = rng.uniform(0, np.pi / 2)
    cells = rng.uniform(5, 11)
    u = (x * np.cos(th) - y * np.sin(th)) * cells
    v = (x * np.sin(th) + y * np.cos(th)) * cells
    du, dv = u - np.round(u), v - np.round(v)
    # halftone: dot radius follows a smooth "tone" field
    ph = rng.uniform(0, 2 * np.pi, 2)
    tone = 0.5 + 0.5 * np.sin(2 * np.pi * (x * rng.uniform(0.5, 1.5)) + ph[0]) * np.cos(2 * np.pi * y * rng.uniform(0.5, 1.5) + ph[1])
    r = 0.12 + 0.33 * tone
    d = np.sqrt(du**2 + dv**2)
    edge = 1.5 * cells / n
    m = np.clip((r - d) / edge + 0.5, 0, 1)
    ink_c = _mix(ink, ink2, tone)
    return _mix(paper[None, None] * np.ones((n, n, 1), np.float32), ink_c, m)


def _segment_dist(px, py, ax, ay, bx, by):
    abx, aby = bx - ax, by - ay
    t = np.clip(((px - ax) * abx + (py - ay) * aby) / (abx**2 + aby**2 + 1e-9), 0, 1)
    return np.sqrt((px - ax - t * abx) ** 2 + (py - ay - t * aby) ** 2)


def _strokes(rng, n):
    x, y = _grid(n)
    bg = _colour(rng, ((0.12, 0.18), (0.1, 0.3), (0.8, 0.95)))  # pale paper
    img = bg[None, None] * np.ones((n, n, 1), np.float32)
    cols = _palette(rng, "strokes", 4)
    for _ in range(rng.integers(5, 10)):
        # a quadratic Bezier brush stroke, tapering width, bristle texture
        p0, p1, p2 = rng.uniform(-0.1, 1.1, (3, 2))
        w = rng.uniform(0.03, 0.07)
        c = cols[rng.integers(len(cols))]
        ts = np.linspace(0, 1, 12)
        pts = ((1 - ts) ** 2)[:, None] * p0 + (2 * (1 - ts) * ts)[:, None] * p1 + (ts**2)[:, None] * p2
        best = np.full((n, n), 9.0, np.float32)
        along = np.zeros((n, n), np.float32)
        for k in range(len(ts) - 1):
            d = _segment_dist(x, y, pts[k, 0], pts[k, 1], pts[k + 1, 0], pts[k + 1, 1])
            closer = d < best
            best = np.where(closer, d, best)
            along = np.where(closer, ts[k], along)
        width = w * (1 - 0.6 * along)
        bristle = 0.85 + 0.15 * np.sin(best / (width + 1e-6) * 9 + rng.uniform(0, 6))
        m = np.clip((width - best) / (1.5 / n), 0, 1)
        img = _mix(img, c * bristle[..., None], m)
    return img


def _mosaic(rng, n):
    x, y = _grid(n)
    k = rng.integers(14, 30)
    pts = rng.uniform(0, 1, (k, 2))
    d = np.sqrt((x[..., None] - pts[:, 0]) ** 2 + (y[..., None] - pts[:, 1]) ** 2)
    order = np.sort(d, axis=-1)
    idx = np.argmin(d, axis=-1)
    cols = np.stack([_colour(rng, PALETTES["mosaic"]) for _ in range(k)])
    tiles = cols[idx]
    grout = np.array(colorsys.hsv_to_rgb(rng.uniform(0.7, 0.8), 0.3, rng.uniform(0.08, 0.2)), np.float32)
    gap = order[..., 1] - order[..., 0]
    m = np.clip((gap - rng.uniform(0.01, 0.025)) / (1.5 / n), 0, 1)
    return _mix(grout[None, None] * np.ones((n, n, 1), np.float32), tiles, m)


def _flow(rng, n):
    x, y = _grid(n)
    base, deep = _palette(rng, "flow", 2)
    streak = np.array(colorsys.hsv_to_rgb(rng.uniform(0.12, 0.17), rng.uniform(0.6, 0.9), rng.uniform(0.85, 1.0)), np.float32)
    # streamlines of a smooth rotational field, via level sets of a stream function
    a = rng.uniform(1.5, 4, 3)
    ph = rng.uniform(0, 2 * np.pi, 3)
    psi = (np.sin(a[0] * 2 * x + ph[0]) * np.cos(a[1] * 2 * y + ph[1]) + 0.5 * np.sin(a[2] * 2 * (x + y) + ph[2]))
    lines = np.sin(psi * rng.uniform(14, 24))
    body = _mix(base, deep, 0.5 + 0.5 * psi / 1.5)
    m = np.clip((lines - 0.75) * 5, 0, 1)
    return _mix(body, streak, m)


def _rings(rng, n):
    x, y = _grid(n)
    c1, c2, c3 = _palette(rng, "rings", 3)
    img = c1[None, None] * np.ones((n, n, 1), np.float32)
    for _ in range(rng.integers(2, 5)):
        cx, cy = rng.uniform(0.0, 1.0, 2)
        r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        f = rng.uniform(8, 16)
        wob = 0.02 * np.sin(np.arctan2(y - cy, x - cx) * rng.integers(3, 8))
        ring = 0.5 + 0.5 * np.sin(2 * np.pi * (r + wob) * f)
        reach = np.clip((rng.uniform(0.35, 0.8) - r) * 8, 0, 1)
        img = _mix(img, _mix(c2, c3, ring), reach * (ring > 0.45))
    return img


def _plaid(rng, n):
    x, y = _grid(n)
    c0, c1, c2 = _palette(rng, "plaid", 3)
    accent = _colour(rng, ((0.0, 1.0), (0.6, 0.9), (0.6, 0.9)))
    f = rng.uniform(3, 6)
    ph = rng.uniform(0, 1, 2)
    bx = ((x * f + ph[0]) % 1.0 < 0.35).astype(np.float32)
    by = ((y * f + ph[1]) % 1.0 < 0.35).astype(np.float32)
    thin = (np.abs(((x * f + ph[0] + 0.67) % 1.0) - 0.5) < 0.04) | (np.abs(((y * f + ph[1] + 0.67) % 1.0) - 0.5) < 0.04)
    img = c0[None, None] * np.ones((n, n, 1), np.float32)
    img = _mix(img, c1, bx * 0.7)
    img = _mix(img, c2, by * 0.6)
    weave = 0.93 + 0.07 * np.sign(np.sin((x + y) * n * np.pi / 2))  # twill diagonal texture
    img = _mix(img * weave[..., None], accent, thin.astype(np.float32))
    return img


GENERATORS = {
    "stripes": _stripes, "dots": _dots, "strokes": _strokes, "mosaic": _mosaic,
    "flow": _flow, "rings": _rings, "plaid": _plaid,
}


def image(style: str, seed: int) -> np.ndarray:
    """One image of `style`, (64, 64, 3) float32 in [0, 1], on the 8-bit grid."""
    rng = np.random.default_rng([STYLES.index(style), seed])
    big = GENERATORS[style](rng, SIZE * SS).astype(np.float32)
    if rng.uniform() < 0.5:
        big = big[:, ::-1]
    small = big.reshape(SIZE, SS, SIZE, SS, 3).mean(axis=(1, 3))
    return np.round(np.clip(small, 0, 1) * 255) / 255


def batch(style: str, seeds):
    import torch

    return torch.from_numpy(np.stack([image(style, int(s)) for s in seeds])).permute(0, 3, 1, 2).float().contiguous()


def grid_png(images, path: str, ncol: int = 8, scale: int = 2) -> None:
    """Save (N, 3, H, W) images in [0, 1] as one PNG grid."""
    from PIL import Image

    arr = images.detach().float().clamp(0, 1).cpu().numpy().transpose(0, 2, 3, 1)
    n, h, w, _ = arr.shape
    rows = (n + ncol - 1) // ncol
    out = np.ones((rows * (h + 2), ncol * (w + 2), 3), np.float32)
    for i, a in enumerate(arr):
        r, c = divmod(i, ncol)
        out[r * (h + 2): r * (h + 2) + h, c * (w + 2): c * (w + 2) + w] = a
    im = Image.fromarray((out * 255).round().astype(np.uint8))
    im.resize((im.width * scale, im.height * scale), Image.NEAREST).save(path)


if __name__ == "__main__":
    import sys
    import time

    import torch

    t = time.time()
    imgs = torch.cat([batch(s, range(8)) for s in STYLES])
    print(f"{len(imgs)} images in {time.time() - t:.2f} s")
    grid_png(imgs, sys.argv[1] if len(sys.argv) > 1 else "/tmp/styles.png")
