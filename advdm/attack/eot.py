"""Expectation over transformations (Athalye et al. 2018) for the views of each step.

Each switch, when on, is applied to a view with probability ``eot_prob`` at a strength
drawn afresh per view:

- JPEG: a differentiable approximation of baseline JPEG (Shin & Song 2017): RGB -> YCbCr
  (full range, as JFIF), 4:2:0 chroma subsampling, 8x8 block DCT, quantisation by the IJG
  tables scaled to a quality drawn in [eot_jpeg, 95], rounding approximated by
  round(x) + (x - round(x))^3 (value of a rounding, a nonzero gradient), and back.
- blur: a Gaussian blur of sigma drawn in [0.3, eot_blur] pixels.
- noise: Gaussian noise of std drawn in [0, eot_noise] / 255.

The parameters and noise are drawn from the attack's seeded generator when the step's
views are sampled, so runs reproduce.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

JPEG_MAX_QUALITY = 95
BLUR_MIN_SIGMA = 0.3

# ITU T.81 Annex K tables (the IJG defaults), row-major.
LUMA_TABLE = [
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
]
CHROMA_TABLE = [
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
]


def quality_table(base: Sequence[int], quality: int) -> Tensor:
    """IJG quality scaling (jcparam.c, baseline, entries clamped to 1..255)."""
    quality = min(max(int(quality), 1), 100)
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    table = torch.tensor(base, dtype=torch.float32)
    return ((table * scale + 50) // 100).clamp(1, 255).view(8, 8)


@lru_cache(maxsize=None)
def dct_matrix() -> Tensor:
    """Orthonormal 8-point DCT-II matrix D: coefficients = D @ block @ D^T."""
    k = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.float()


def soft_round(x: Tensor) -> Tensor:
    """round(x) + (x - round(x))^3: close to rounding, with a nonzero gradient."""
    r = torch.round(x)
    return r + (x - r) ** 3


def rgb_to_ycbcr(x: Tensor) -> Tensor:
    """[0, 1] RGB -> JFIF YCbCr on the 0..255 scale."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 0.5
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 0.5
    return torch.stack([y, cb, cr], 1) * 255


def ycbcr_to_rgb(x: Tensor) -> Tensor:
    y, cb, cr = x[:, 0] / 255, x[:, 1] / 255 - 0.5, x[:, 2] / 255 - 0.5
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return torch.stack([r, g, b], 1)


def _blocks_quantised(plane: Tensor, table: Tensor) -> Tensor:
    """DCT, quantise (soft rounding), dequantise, inverse DCT of (N, 1, H, W) with H, W % 8 == 0."""
    n, _, h, w = plane.shape
    d = dct_matrix().to(plane)
    blocks = plane.reshape(n, h // 8, 8, w // 8, 8).transpose(2, 3)  # n, bh, bw, 8, 8
    coef = d @ (blocks - 128) @ d.T
    t = table.to(plane)
    coef = soft_round(coef / t) * t
    out = d.T @ coef @ d + 128
    return out.transpose(2, 3).reshape(n, 1, h, w)


def jpeg(x: Tensor, quality: int) -> Tensor:
    """Differentiable approximation of a JPEG round trip at an IJG quality, (N, 3, H, W) in [0, 1]."""
    h, w = x.shape[-2:]
    ph, pw = -h % 16, -w % 16
    if ph or pw:  # the encoder pads by edge replication to whole MCUs
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    ycc = rgb_to_ycbcr(x)
    y = _blocks_quantised(ycc[:, :1], quality_table(LUMA_TABLE, quality))
    chroma = F.avg_pool2d(ycc[:, 1:], 2)  # 4:2:0
    ch, cw = chroma.shape[-2:]
    cph, cpw = -ch % 8, -cw % 8
    if cph or cpw:
        chroma = F.pad(chroma, (0, cpw, 0, cph), mode="replicate")
    table = quality_table(CHROMA_TABLE, quality)
    chroma = torch.cat([_blocks_quantised(chroma[:, i:i + 1], table) for i in range(2)], 1)[..., :ch, :cw]
    # decoders upsample chroma with a triangle filter ("fancy upsampling"), about bilinear
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    out = ycbcr_to_rgb(torch.cat([y, chroma], 1))
    # clamp as the decoder does, keeping the gradient inside the range
    out = out - (out - out.clamp(0, 1)).detach()
    return out[..., :h, :w]


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur, reflect-padded, kernel radius ceil(3 sigma)."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if radius < 1:
        return x
    coords = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum()).to(x.dtype)
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class EOT:
    """The configured transformation switches; ``draw`` picks one view's transforms."""

    def __init__(self, jpeg_quality: Optional[int] = None, blur: float = 0.0, noise: float = 0.0, prob: float = 0.5):
        if jpeg_quality is not None and not 1 <= jpeg_quality <= JPEG_MAX_QUALITY:
            raise ValueError(f"EOT JPEG quality must be in 1..{JPEG_MAX_QUALITY}, got {jpeg_quality}")
        if blur < 0 or noise < 0:
            raise ValueError("EOT blur sigma and noise std must be >= 0")
        if not 0 < prob <= 1:
            raise ValueError(f"EOT probability must be in (0, 1], got {prob}")
        self.jpeg_quality, self.blur, self.noise, self.prob = jpeg_quality, float(blur), float(noise), float(prob)

    @classmethod
    def from_config(cls, config) -> Optional["EOT"]:
        """None when every switch is off (then views draw nothing for it)."""
        q = getattr(config, "eot_jpeg", None)
        blur = float(getattr(config, "eot_blur", 0.0) or 0.0)
        noise = float(getattr(config, "eot_noise", 0.0) or 0.0)
        if q is None and blur == 0 and noise == 0:
            return None
        return cls(q, blur, noise, float(getattr(config, "eot_prob", 0.5)))

    def __bool__(self) -> bool:
        return self.jpeg_quality is not None or self.blur > 0 or self.noise > 0

    def draw(self, generator: torch.Generator, size) -> Callable[[Tensor], Tensor]:
        """The transforms of one view of `size` (H, W), drawn now; order: blur, noise, JPEG
        (a picture is filtered, then saved)."""
        steps: List[Callable[[Tensor], Tensor]] = []
        if self.blur > 0:
            u = torch.rand(2, generator=generator).tolist()
            if u[0] < self.prob:
                lo = min(BLUR_MIN_SIGMA, self.blur)
                sigma = lo + (self.blur - lo) * u[1]
                steps.append(lambda v, s=sigma: gaussian_blur(v, s))
        if self.noise > 0:
            u = torch.rand(2, generator=generator).tolist()
            if u[0] < self.prob:
                n = torch.randn((1, 3, *size), generator=generator) * (self.noise * u[1] / 255)
                steps.append(lambda v, n=n: v + n.to(v))
        if self.jpeg_quality is not None:
            u = torch.rand(2, generator=generator).tolist()
            if u[0] < self.prob:
                q = self.jpeg_quality + int(u[1] * (JPEG_MAX_QUALITY - self.jpeg_quality + 1))
                q = min(q, JPEG_MAX_QUALITY)
                steps.append(lambda v, q=q: jpeg(v, q))

        def apply(v: Tensor) -> Tensor:
            for step in steps:
                v = step(v)
            return v

        return apply
