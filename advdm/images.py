"""Images in and out, done right.

Loading keeps the native size, applies the EXIF orientation (outputs are stored upright),
keeps alpha bit-exact and keeps 16-bit sources at 16 bits. Greyscale and palette sources come
back as RGB: the protection perturbs each channel, so they are saved as RGB. Animated and
multi-page files are refused unless first_frame=True: an artist expects their whole artwork back,
not one frame of it. Anything else we cannot handle faithfully is refused with a one-line
ImageError naming the file.

Saving writes lossless PNG only (8- or 16-bit, our own small encoder so 16-bit RGB works),
atomically, never over the input and never over an existing file unless overwrite=True.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

try:
    from PIL import ImageCms
except ImportError:  # Pillow built without littlecms
    ImageCms = None

DEFAULT_MAX_PIXELS = 64_000_000
PathLike = Union[str, os.PathLike]
_LOSSY = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".webp": "WebP",
          ".avif": "AVIF", ".heic": "HEIC", ".heif": "HEIF"}
# PIL has no 16-bit colour mode: it unpacks these to their high bytes. Decoding again with the
# byte order swapped yields the low bytes (same row layout, same PNG filter stride).
_OTHER = "B" if sys.byteorder == "little" else "L"  # the opposite of native ("N", libtiff's output)
_SWAP16 = {f"{m};16{a}": f"{m};16{b}" for m in ("RGB", "RGBA", "RGBX")
           for a, b in (("B", "L"), ("L", "B"), ("N", _OTHER))}


class ImageError(ValueError):
    """An image we cannot read or will not write. str() is one line: "<file>: <reason>"."""


@dataclass
class LoadedImage:
    rgb: torch.Tensor  # (1, 3, H, W) float32, exactly k / levels
    alpha: Optional[np.ndarray]  # (H, W) uint8 or uint16 as stored in the source; None if opaque
    levels: int  # 255 for 8-bit sources, 65535 for 16-bit ones
    path: Optional[Path]
    mode: str  # the source's PIL mode; 16-bit colour PNG/TIFF shows as "RGB;16", "RGBA;16", "LA;16"
    notes: list[str] = field(default_factory=list)  # what was done to it, for the user
    icc_profile: Optional[bytes] = None  # RGB colour profile to embed again, so colours don't shift

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[-1], self.rgb.shape[-2]

    def save(self, path: PathLike, rgb: torch.Tensor, *, metadata=None, overwrite=False) -> Path:
        """save_png with this image's alpha, bit depth, colour profile and path (never overwritten)."""
        return save_png(path, rgb, alpha=self.alpha, levels=self.levels, metadata=metadata,
                        icc_profile=self.icc_profile, overwrite=overwrite, source=self.path)


def _error(name, reason) -> ImageError:
    return ImageError(f"{name}: {reason}")


def _unreadable(name, e: BaseException) -> ImageError:
    text = " ".join(str(e).split()) or type(e).__name__  # one line, whatever PIL said
    return _error(name, "truncated image file" if "truncated" in text.lower() else f"cannot read image ({text})")


# ---------------------------------------------------------------------------------- loading


def load_image(path: PathLike, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, *, first_frame=False) -> LoadedImage:
    """Read an image file (never modified) as RGB on its own k/levels grid, upright."""
    path = Path(path)
    if path.is_dir():
        raise _error(path, "is a folder, not an image file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _error(path, "no such file") from None
    except OSError as e:
        raise _error(path, f"cannot read file ({e.strerror or e})") from None
    return _load(data, str(path), path, max_pixels, first_frame)


def load_image_bytes(data: bytes, name: str, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, *,
                     first_frame=False) -> LoadedImage:
    """load_image for an upload: `name` is only used in messages."""
    return _load(bytes(data), name, None, max_pixels, first_frame)


def _load(data: bytes, name: str, path: Optional[Path], max_pixels, first_frame) -> LoadedImage:
    if not data:
        raise _error(name, "empty file")
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # PIL's own guard, above about 179 megapixels
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(pixels[1]) / 1e6:,.0f} megapixels" if pixels else "too many pixels"
        raise _error(name, f"image too large ({size}); refusing to decode it") from None
    except UnidentifiedImageError:
        raise _error(name, "not an image file, or a format this tool cannot read") from None
    except Exception as e:
        raise _unreadable(name, e) from e
    with im:
        w, h = im.size  # from the header: nothing decoded yet
        if max_pixels is not None and w * h > max_pixels:
            raise _error(name, f"image is {w}x{h} ({w * h / 1e6:,.1f} megapixels), above the limit of "
                               f"{max_pixels / 1e6:g} megapixels")
        notes = []
        frames = getattr(im, "n_frames", 1)
        if frames > 1 and im.format != "MPO":  # MPO: camera JPEG whose first image is the photo
            if not first_frame:
                raise _error(name, f"animated or multi-page image ({frames} frames); export the frame "
                                   "to protect as a still PNG")
            notes.append(f"first frame of an animated or multi-page image ({frames} frames)")
        try:
            pixels, levels, mode, icc = _pixels(im, data, notes)
            pixels = _upright(pixels, im, notes)
        except ImageError:
            raise
        except Exception as e:  # PIL, zlib, struct, memory: report it, never a traceback
            raise _unreadable(name, e) from e
    # float32 division is correctly rounded, so this is exactly the grid quantize() uses
    rgb = torch.from_numpy(np.ascontiguousarray(pixels[..., :3]).astype(np.float32) / np.float32(levels))
    alpha = pixels[..., 3].copy() if pixels.shape[2] == 4 else None
    return LoadedImage(rgb.permute(2, 0, 1)[None].contiguous(), alpha, levels, path, mode, notes, icc)


def _pixels(im: Image.Image, data: bytes, notes: list[str]):
    """(H, W, 3 or 4) uint8/uint16 array, levels, source mode, RGB ICC profile or None."""
    mode = im.mode
    icc = im.info.get("icc_profile") or None
    rawmodes = [_rawmode(t) for t in im.tile]
    if rawmodes and all(r in _SWAP16 for r in rawmodes):
        pixels, levels, mode = _colour16(im, data), 65535, rawmodes[0].split(";")[0] + ";16"
    elif im.format == "PNG" and rawmodes == ["LA;16B"]:  # 16-bit grey+alpha: PIL would give 8-bit RGBA
        im.tile = [_with_rawmode(im.tile[0], "RGBA")]  # same 4 bytes per pixel: get them raw
        b = np.asarray(im).astype(np.uint16)
        grey, alpha = b[..., 0] << 8 | b[..., 1], b[..., 2] << 8 | b[..., 3]
        pixels, levels, mode = np.dstack([grey, grey, grey, alpha]), 65535, "LA;16"
    elif mode.startswith("I"):  # 16-bit greyscale ("I" too, when its values fit)
        grey = np.asarray(im)
        if mode == "I" and grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise ValueError("32-bit integer pixels are not supported; export as 8- or 16-bit")
        grey = grey.astype(np.uint16)
        pixels, levels = np.dstack([grey] * 3), 65535
    elif mode == "F":
        raise ValueError("floating-point pixels are not supported; export as 8- or 16-bit")
    else:
        if mode == "CMYK":
            im, icc = _cmyk_to_rgb(im, icc, notes), None
        elif any(";16" in r for r in rawmodes if r):
            notes.append("read at 8 bits per channel (16-bit is kept for RGB/RGBA, greyscale)")
        target = "RGBA" if _has_alpha(im) else "RGB"
        pixels, levels = np.asarray(im if im.mode == target else im.convert(target)), 255
    if levels == 65535 and "transparency" in im.info and pixels.shape[2] == 3:  # 16-bit tRNS colour
        key = np.asarray(im.info["transparency"], dtype=np.uint16)
        opaque = (pixels != key).any(axis=2) if key.size == 3 else pixels[..., 0] != key
        pixels = np.dstack([pixels, np.where(opaque, 65535, 0).astype(np.uint16)])
    if mode in ("1", "L", "La") or mode.startswith(("LA", "I")):
        notes.append("greyscale saved as RGB")
    elif mode in ("P", "PA"):
        notes.append("palette image saved as RGB" + ("A" if pixels.shape[2] == 4 else ""))
    if icc and icc[16:20] != b"RGB ":  # a grey/CMYK profile would be invalid on an RGB PNG
        notes.append(f"{icc[16:20].decode('latin-1').strip()} colour profile dropped")
        icc = None
    return pixels, levels, mode, icc


def _has_alpha(im: Image.Image) -> bool:  # Image.has_transparency_data, which Pillow 10.0 lacks
    palette_alpha = im.mode == "P" and im.palette is not None and im.palette.mode.endswith("A")
    return im.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in im.info or palette_alpha


def _rawmode(tile) -> Optional[str]:
    args = tile[3]  # the rawmode, alone or first in a tuple, depending on the codec
    if isinstance(args, tuple) and args:
        args = args[0]
    return args if isinstance(args, str) else None


def _with_rawmode(tile, rawmode: str):
    args = rawmode if isinstance(tile[3], str) else (rawmode, *tile[3][1:])
    return type(tile)(*tile[:3], args) if hasattr(tile, "_fields") else (*tile[:3], args)  # Pillow < 11: tuples


def _colour16(im: Image.Image, data: bytes) -> np.ndarray:
    """Full 16-bit RGB(A): PIL's normal decode gives the high bytes, a byte-swapped one the low."""
    low_im = Image.open(io.BytesIO(data))
    low_im.tile = [_with_rawmode(t, _SWAP16[_rawmode(t)]) for t in low_im.tile]
    high, low = np.asarray(im).astype(np.uint16), np.asarray(low_im).astype(np.uint16)
    low_im.close()
    return high << 8 | low


def _cmyk_to_rgb(im: Image.Image, icc: Optional[bytes], notes: list[str]) -> Image.Image:
    if icc and ImageCms is not None:
        with contextlib.suppress(ImageCms.PyCMSError, OSError, ValueError):
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            rgb = ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
            notes.append("CMYK converted to sRGB with its colour profile")
            return rgb
    notes.append("CMYK converted to RGB without a colour profile (colours are approximate)")
    return im.convert("RGB")


_ORIENT = {  # EXIF orientation -> how to turn the stored (H, W, C) pixels upright
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: np.rot90(a, 1),
}


def _upright(pixels: np.ndarray, im: Image.Image, notes: list[str]) -> np.ndarray:
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block shouldn't stop the image itself
        notes.append("unreadable EXIF ignored")
        return pixels
    if orientation not in _ORIENT:
        return pixels
    notes.append(f"turned upright from EXIF orientation {orientation}")
    return np.ascontiguousarray(_ORIENT[orientation](pixels))


# ---------------------------------------------------------------------------------- saving


def save_png(path: PathLike, rgb: torch.Tensor, *, alpha: Optional[np.ndarray] = None, levels: int = 255,
             metadata: Optional[dict[str, str]] = None, icc_profile: Optional[bytes] = None,
             overwrite: bool = False, source: Union[PathLike, Iterable[PathLike], None] = None) -> Path:
    """Write rgb (1, 3, H, W) as a lossless PNG, 8-bit for levels=255, 16-bit for 65535.

    Refuses a non-.png name, any `source` path (the inputs) and, unless overwrite, an existing
    file. Written to a temporary file in the same folder and renamed, so a failure never leaves a
    half-written image or a stray temp file."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise _error(path, "output must be a .png file (lossless)")
    sources = [] if source is None else [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if any(_same_file(path, Path(s)) for s in sources):
        raise _error(path, "is an input image; refusing to overwrite it")
    if path.exists() and not overwrite:
        raise _error(path, "already exists (use overwrite to replace it)")
    data = png_bytes(rgb, alpha, levels, metadata, icc_profile)  # encode first: nothing to clean up if it fails
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)  # umask applies
    except OSError as e:
        raise _error(path, f"cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _error(path, f"cannot write ({e.strerror or e})") from e
        raise
    return path


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)  # hard links, case-insensitive file systems
    return False


def png_bytes(rgb: torch.Tensor, alpha: Optional[np.ndarray] = None, levels: int = 255,
              metadata: Optional[dict[str, str]] = None, icc_profile: Optional[bytes] = None) -> bytes:
    """The PNG file save_png writes, in memory. Adds "Software: advdm <version>" unless given."""
    from . import __version__

    text = {"Software": f"advdm {__version__}", **(metadata or {})}
    return _encode_png(_to_pixels(rgb, alpha, levels), text, icc_profile)


def _to_pixels(rgb: torch.Tensor, alpha, levels: int) -> np.ndarray:
    if levels not in (255, 65535):
        raise ValueError(f"levels must be 255 or 65535, got {levels}")
    if rgb.ndim != 4 or rgb.shape[:2] != (1, 3):
        raise ValueError(f"rgb must be (1, 3, H, W), got {tuple(rgb.shape)}")
    k = (rgb[0].detach().float().cpu() * levels).round_()
    if torch.isnan(k).any():
        raise ValueError("rgb contains NaN")
    dtype = np.uint8 if levels == 255 else np.uint16
    pixels = k.clamp_(0, levels).permute(1, 2, 0).numpy().astype(dtype)
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.shape != pixels.shape[:2]:
            raise ValueError(f"alpha is {alpha.shape}, image is {pixels.shape[:2]}")
        if alpha.dtype == np.uint8 and dtype == np.uint16:
            alpha = alpha.astype(np.uint16) * 257  # exact: 8-bit a is 16-bit a*257
        elif alpha.dtype != dtype:
            raise ValueError(f"alpha is {alpha.dtype}; a {levels}-level image needs {np.dtype(dtype)}")
        pixels = np.dstack([pixels, alpha])
    return pixels


def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def _encode_png(pixels: np.ndarray, text: dict[str, str], icc: Optional[bytes]) -> bytes:
    h, w, c = pixels.shape
    depth = pixels.dtype.itemsize * 8
    rows = np.ascontiguousarray(pixels, dtype=">u2" if depth == 16 else np.uint8).view(np.uint8).reshape(h, -1)
    out = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, 6 if c == 4 else 2, 0, 0, 0))]
    if icc:
        out.append(_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc)))
    for key, value in text.items():
        k, v = key.encode("latin-1"), str(value)
        if not 1 <= len(k) <= 79 or b"\0" in k:
            raise ValueError(f"invalid PNG text key {key!r}")
        try:
            out.append(_chunk(b"tEXt", k + b"\0" + v.encode("latin-1")))
        except UnicodeEncodeError:  # iTXt: uncompressed UTF-8, no language tag
            out.append(_chunk(b"iTXt", k + b"\0\0\0\0\0" + v.encode("utf-8")))
    z, compressed = zlib.compressobj(6), []
    bpp = c * depth // 8
    for start in range(0, h, 256):  # in slabs, to bound the filter's memory on huge images
        prev = rows[start - 1 : start] if start else np.zeros((1, rows.shape[1]), np.uint8)
        filtered = _paeth(np.concatenate([prev, rows[start : start + 256]]), bpp)
        compressed.append(z.compress(np.hstack([np.full((len(filtered), 1), 4, np.uint8), filtered]).tobytes()))
    compressed = b"".join(compressed) + z.flush()
    out += [_chunk(b"IDAT", compressed[i : i + (1 << 20)]) for i in range(0, len(compressed), 1 << 20)]
    return b"".join(out + [_chunk(b"IEND", b"")])


def _paeth(rows: np.ndarray, bpp: int) -> np.ndarray:
    """PNG filter 4 for rows[1:], rows[0] being the row above. Good for photos and paintings."""
    x, b = rows[1:].astype(np.int16), rows[:-1].astype(np.int16)
    a, c = np.zeros_like(x), np.zeros_like(x)
    a[:, bpp:], c[:, bpp:] = x[:, :-bpp], b[:, :-bpp]
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    predictor = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    return ((x - predictor) & 0xFF).astype(np.uint8)


# ---------------------------------------------------------------------------------- helpers


def output_path(source: PathLike, output_dir: Optional[PathLike] = None, suffix: str = "_protected") -> Path:
    """<output_dir>/<name><suffix>.png (next to the source when output_dir is None). Always .png."""
    source = Path(source)
    return Path(source.parent if output_dir is None else output_dir) / f"{source.stem}{suffix}.png"


def warn_if_lossy(path: PathLike) -> Optional[str]:
    """A warning to show if the user asked for a lossy output; the caller then writes
    Path(path).with_suffix(".png") instead."""
    path = Path(path)
    kind = _LOSSY.get(path.suffix.lower())
    if kind is None:
        return None
    return (f"{path}: {kind} is lossy and would wash out the protection; saving lossless PNG "
            f"({path.with_suffix('.png').name}) instead")


def for_truncating_savers(x: torch.Tensor) -> torch.Tensor:
    """For hosts that store np.clip(255. * x, 0, 255).astype(np.uint8) (ComfyUI's SaveImage),
    which truncates: put each value just above its 8-bit grid point, so truncating gives the
    same byte as rounding, with margin for float noise added later. Elementwise, any layout;
    at least float32 (in half precision the nudge would vanish). 255 becomes 1.0000039, on
    purpose: the savers clip it, and the margin matters there too."""
    k = (x.float() * 255).round().clamp(0, 255)
    return ((k + 1e-3) / 255).to(torch.promote_types(x.dtype, torch.float32))


def read_png_metadata(path: PathLike) -> dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt) of a PNG file."""
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise _error(path, "not a PNG file")
            return {k: str(v) for k, v in im.text.items()}
    except ImageError:
        raise
    except Exception as e:
        raise _unreadable(path, e) from e
