"""ComfyUI IMAGE / MASK layout helpers (pure torch; no ComfyUI needed).

IMAGE: float32 (B, H, W, C) in [0, 1], C = 3 (or 4 with alpha). MASK: (B, H, W) or
(H, W) in [0, 1]. The core works on (1, 3, H, W).
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor


def split_images(image: Tensor) -> List[Tensor]:
    """IMAGE (B, H, W, C) -> list of (1, 3, H, W) float32 RGB (alpha, if any, dropped)."""
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4:
        raise ValueError(f"expected an IMAGE of shape (B, H, W, C), got {tuple(image.shape)}")
    c = image.shape[-1]
    out = []
    for i in range(image.shape[0]):
        x = image[i : i + 1].detach().float()
        if c == 1:
            x = x.expand(-1, -1, -1, 3)
        elif c >= 3:
            x = x[..., :3]
        else:
            raise ValueError(f"expected 1, 3 or 4 channels, got {c}")
        out.append(x.permute(0, 3, 1, 2).contiguous())
    return out


def mask_for(mask: Optional[Tensor], index: int, height: int, width: int) -> Optional[Tensor]:
    """MASK (B, H, W) / (H, W) -> (1, 1, H, W) for image `index` (the last mask repeats).
    A mask of another size is resized (bilinear) to the image."""
    if mask is None:
        return None
    m = mask.detach().float()
    if m.dim() == 2:
        m = m.unsqueeze(0)
    if m.dim() == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.dim() != 3:
        raise ValueError(f"expected a MASK of shape (B, H, W), got {tuple(mask.shape)}")
    m = m[min(index, m.shape[0] - 1)].unsqueeze(0).unsqueeze(0)
    if m.shape[-2:] != (height, width):
        m = torch.nn.functional.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)
    return m.clamp(0, 1)


def join_images(images: List[Tensor], like: Tensor) -> Tensor:
    """list of (1, 3, H, W) -> IMAGE (B, H, W, C) with the layout of `like` (alpha kept)."""
    rgb = torch.cat([x.permute(0, 2, 3, 1) for x in images], 0).float()
    c = like.shape[-1] if like.dim() == 4 else 3
    if c == 4:
        rgb = torch.cat([rgb, like[..., 3:4].float().to(rgb.device)], -1)
    elif c == 1:
        rgb = rgb.mean(-1, keepdim=True)
    return rgb


def amplified(original: Tensor, protected: Tensor, epsilon: float) -> Tensor:
    """The perturbation made visible: grey 0.5 is no change, +/-epsilon maps to 1 / 0."""
    scale = 255.0 / (2.0 * max(float(epsilon), 1e-6))
    return (0.5 + (protected.float() - original.float()) * scale).clamp(0, 1)


def to_8bit_grid(x: Tensor) -> Tensor:
    """round(x * 255) / 255: what LoadImage gives for the same 8-bit file."""
    return (x.float() * 255).round().clamp(0, 255) / 255


def same_size_batch(images: List[Tensor]) -> Tensor:
    """list of (1, 3, h, w) of any sizes -> IMAGE (B, H, W, 3), each padded with white at the
    bottom and right to the largest size (a batch must share one size)."""
    h = max(x.shape[-2] for x in images)
    w = max(x.shape[-1] for x in images)
    out = torch.ones(len(images), h, w, 3)
    for i, x in enumerate(images):
        out[i, : x.shape[-2], : x.shape[-1]] = x[0].permute(1, 2, 0).float().cpu()
    return out
