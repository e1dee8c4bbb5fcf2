"""advdm.images: every awkward input is generated here at test time (no binary fixtures)."""
import hashlib
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from advdm import images
from advdm.images import ImageError, for_truncating_savers, load_image, load_image_bytes, png_bytes, save_png

RNG = np.random.default_rng(0)


def rand8(h, w, c=3):
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def rand16(h, w, c=3):
    return RNG.integers(0, 65536, (h, w, c), dtype=np.uint16)


def as_tensor(pixels, levels):
    return torch.from_numpy(pixels[..., :3].astype(np.float32) / levels).permute(2, 0, 1)[None]


def stored(path):
    """What a PNG file really holds, read independently of advdm (8- or 16-bit, any channels)."""
    return np.asarray(Image.open(path))


def chunk(tag, body):
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def raw_png(pixels, color_type, interlace=False, extra=b""):
    """An independent PNG encoder that uses all five filter types and optionally Adam7, so the
    loader is tested on what other software writes (PIL cannot write 16-bit colour PNGs)."""
    h, w = pixels.shape[:2]
    depth = pixels.dtype.itemsize * 8
    bpp = (pixels.shape[2] if pixels.ndim == 3 else 1) * depth // 8

    def scanlines(img):
        rows = np.ascontiguousarray(img, dtype=">u2" if depth == 16 else np.uint8).view(np.uint8)
        rows = rows.reshape(img.shape[0], -1).astype(np.int16)
        out, prev = [], np.zeros(rows.shape[1], np.int16)
        for i, x in enumerate(rows):
            a = np.concatenate([np.zeros(bpp, np.int16), x[:-bpp]])
            c = np.concatenate([np.zeros(bpp, np.int16), prev[:-bpp]])
            p = a + prev - c
            pa, pb, pc = abs(p - a), abs(p - prev), abs(p - c)
            paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, prev, c))
            kind = i % 5
            pred = [0 * x, a, prev, (a + prev) // 2, paeth][kind]
            out.append(bytes([kind]) + ((x - pred) & 0xFF).astype(np.uint8).tobytes())
            prev = x
        return b"".join(out)

    if interlace:
        adam7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        subs = [pixels[y::dy, x::dx] for x, y, dx, dy in adam7]
        data = b"".join(scanlines(s) for s in subs if s.size)
    else:
        data = scanlines(pixels)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, int(interlace))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b"")


def header_only_png(w, h):
    """A PNG whose header claims w x h but whose pixel data is junk: decoding it would fail."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def tiff48(pixels, deflate=False):
    """Little-endian 16-bit RGB TIFF (PIL can read but not write these); deflate goes via libtiff."""
    h, w, _ = pixels.shape
    strip = pixels.astype("<u2").tobytes()
    strip = zlib.compress(strip) if deflate else strip
    bits_at = 8 + 2 + 10 * 12 + 4  # after the header and the 10-entry IFD
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, bits_at), (259, 3, 1, 8 if deflate else 1), (262, 3, 1, 2),
               (273, 4, 1, bits_at + 6), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, len(strip)), (284, 3, 1, 1)]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:  # a lone SHORT sits left-aligned in its 4-byte slot
        ifd += struct.pack("<HHI", tag, kind, count)
        ifd += struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
    return b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + strip


def one_line_naming(err, name):
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(name)), message
    return message


# ---------------------------------------------------------------------------------- loading


def test_rgb_loads_at_native_odd_size_on_the_8bit_grid(tmp_path):
    pixels = rand8(23, 37)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.rgb.shape == (1, 3, 23, 37) and loaded.rgb.dtype == torch.float32
    assert loaded.size == (37, 23) and loaded.levels == 255 and loaded.alpha is None and loaded.mode == "RGB"
    assert torch.equal(loaded.rgb, as_tensor(pixels, 255))  # exactly k/255, as quantize() computes it
    assert torch.equal((loaded.rgb * 255).round() / 255, loaded.rgb)


def test_one_by_one_pixel_round_trips(tmp_path):
    Image.fromarray(np.array([[[10, 200, 30]]], np.uint8)).save(tmp_path / "dot.png")
    loaded = load_image(tmp_path / "dot.png")
    out = loaded.save(tmp_path / "dot_out.png", loaded.rgb)
    assert stored(out).tolist() == [[[10, 200, 30]]]


def test_alpha_is_kept_bit_exact_including_colour_under_transparent_pixels(tmp_path):
    pixels = rand8(19, 11, 4)
    pixels[0, :, 3] = 0  # fully transparent row whose colours must survive too
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.alpha.dtype == np.uint8 and np.array_equal(loaded.alpha, pixels[..., 3])
    out = loaded.save(tmp_path / "out.png", loaded.rgb)
    assert np.array_equal(stored(out), pixels)


@pytest.mark.parametrize("interlace", [False, True])
def test_16bit_rgb_png_loads_every_bit(tmp_path, interlace):
    pixels = rand16(21, 13)
    (tmp_path / "deep.png").write_bytes(raw_png(pixels, 2, interlace))
    loaded = load_image(tmp_path / "deep.png")
    assert loaded.levels == 65535 and loaded.mode == "RGB;16"
    assert torch.equal(loaded.rgb, as_tensor(pixels, 65535))


def test_16bit_rgba_png_round_trips_exactly(tmp_path):
    pixels = rand16(9, 17, 4)
    (tmp_path / "deep.png").write_bytes(raw_png(pixels, 6))
    loaded = load_image(tmp_path / "deep.png")
    assert loaded.alpha.dtype == np.uint16 and np.array_equal(loaded.alpha, pixels[..., 3])
    out = loaded.save(tmp_path / "out.png", loaded.rgb)
    assert out.read_bytes()[24] == 16  # IHDR bit depth
    again = load_image(out)
    assert torch.equal(again.rgb, loaded.rgb) and np.array_equal(again.alpha, pixels[..., 3])


def test_16bit_transparent_colour_becomes_alpha(tmp_path):
    pixels = rand16(6, 6)
    key = pixels[2, 3]
    trns = chunk(b"tRNS", key.astype(">u2").tobytes())
    (tmp_path / "t.png").write_bytes(raw_png(pixels, 2, extra=trns))
    loaded = load_image(tmp_path / "t.png")
    assert np.array_equal(loaded.alpha, np.where((pixels == key).all(axis=2), 0, 65535))


def test_16bit_grey_png_stays_16bit_as_rgb(tmp_path):
    grey = rand16(8, 6, 1)[..., 0]
    Image.fromarray(grey).save(tmp_path / "g.png")  # PIL writes I;16 as a 16-bit greyscale PNG
    loaded = load_image(tmp_path / "g.png")
    assert loaded.levels == 65535 and "greyscale saved as RGB" in loaded.notes
    assert torch.equal(loaded.rgb, as_tensor(np.dstack([grey] * 3), 65535))


def test_16bit_grey_alpha_png_keeps_both_channels(tmp_path):
    pixels = rand16(7, 5, 2)
    (tmp_path / "ga.png").write_bytes(raw_png(pixels, 4))
    loaded = load_image(tmp_path / "ga.png")
    assert loaded.levels == 65535 and loaded.mode == "LA;16"
    assert torch.equal(loaded.rgb, as_tensor(np.dstack([pixels[..., 0]] * 3), 65535))
    assert np.array_equal(loaded.alpha, pixels[..., 1])


@pytest.mark.parametrize("deflate", [False, True])
def test_16bit_rgb_tiff_loads_every_bit(tmp_path, deflate):
    pixels = rand16(6, 10)
    (tmp_path / "scan.tif").write_bytes(tiff48(pixels, deflate))
    loaded = load_image(tmp_path / "scan.tif")
    assert loaded.levels == 65535 and torch.equal(loaded.rgb, as_tensor(pixels, 65535))


def test_greyscale_8bit_comes_back_as_equal_rgb_channels(tmp_path):
    grey = rand8(5, 9, 1)[..., 0]
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    loaded = load_image(tmp_path / "g.png")
    assert torch.equal(loaded.rgb, as_tensor(np.dstack([grey] * 3), 255)) and loaded.mode == "L"
    assert "greyscale saved as RGB" in loaded.notes


def test_greyscale_alpha_keeps_alpha(tmp_path):
    pixels = rand8(5, 9, 2)
    Image.fromarray(pixels, "LA").save(tmp_path / "ga.png")
    loaded = load_image(tmp_path / "ga.png")
    assert np.array_equal(loaded.alpha, pixels[..., 1])
    assert torch.equal(loaded.rgb, as_tensor(np.dstack([pixels[..., 0]] * 3), 255))


def test_palette_without_transparency_is_opaque_rgb(tmp_path):
    im = Image.fromarray(rand8(12, 12)).quantize(16)
    im.save(tmp_path / "p.png")
    loaded = load_image(tmp_path / "p.png")
    assert loaded.alpha is None and loaded.mode == "P"
    assert torch.equal(loaded.rgb, as_tensor(np.asarray(im.convert("RGB")), 255))


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_transparency_becomes_alpha(tmp_path, suffix):
    index = RNG.integers(0, 4, (10, 8), dtype=np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])
    im.save(tmp_path / f"p{suffix}", transparency=2)
    loaded = load_image(tmp_path / f"p{suffix}")
    assert np.array_equal(loaded.alpha, np.where(index == 2, 0, 255))
    green = torch.from_numpy(index == 1)
    assert torch.equal(loaded.rgb[0][:, green].T, torch.tensor([0.0, 1.0, 0.0]).expand(int(green.sum()), 3))


def test_exif_orientation_6_is_stored_upright(tmp_path):
    pixels = rand8(10, 30)  # stored landscape, shown portrait
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "phone.png", exif=exif.tobytes())
    loaded = load_image(tmp_path / "phone.png")
    assert loaded.size == (10, 30) and any("EXIF orientation 6" in n for n in loaded.notes)
    out = loaded.save(tmp_path / "out.png", loaded.rgb)
    assert Image.open(out).size == (10, 30)
    assert np.array_equal(stored(out), np.rot90(pixels, -1))  # 6 = turn 90 degrees clockwise


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pil(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rand8(4, 7)).save(tmp_path / "o.png", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")).convert("RGB"))
    assert torch.equal(load_image(tmp_path / "o.png").rgb, as_tensor(expected, 255))


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[..., 1:3] = 255  # magenta + yellow = red
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "print.jpg", quality=95)
    loaded = load_image(tmp_path / "print.jpg")
    assert loaded.mode == "CMYK" and any("CMYK converted" in n for n in loaded.notes)
    r, g, b = loaded.rgb[0].mean(dim=(1, 2)).tolist()
    assert r > 0.9 and g < 0.1 and b < 0.1


def test_rgb_colour_profile_is_carried_to_the_output(tmp_path):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(rand8(4, 4)).save(tmp_path / "c.png", icc_profile=icc)
    loaded = load_image(tmp_path / "c.png")
    assert loaded.icc_profile == icc
    assert Image.open(loaded.save(tmp_path / "out.png", loaded.rgb)).info["icc_profile"] == icc


def animated(tmp_path, suffix):
    frames = [Image.fromarray(np.full((6, 6, 3), v, np.uint8)) for v in (10, 200)]
    path = tmp_path / f"anim{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


@pytest.mark.parametrize("suffix", [".gif", ".png"])
def test_animated_images_are_refused_by_default(tmp_path, suffix):
    path = animated(tmp_path, suffix)
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert "animated" in one_line_naming(err, path) and "2 frames" in str(err.value)


def test_animated_first_frame_on_request_says_so(tmp_path):
    loaded = load_image(animated(tmp_path, ".png"), first_frame=True)
    assert torch.equal(loaded.rgb, torch.full((1, 3, 6, 6), 10 / 255))
    assert any("first frame" in n for n in loaded.notes)


def test_over_the_pixel_limit_is_refused_from_the_header_alone(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(header_only_png(10_000, 8_000))  # 80 MP: decoding the junk data would fail differently
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert "10000x8000" in one_line_naming(err, path) and "limit" in str(err.value)


def test_decompression_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(header_only_png(100_000, 100_000))
    with pytest.raises(ImageError) as err:
        load_image(path, max_pixels=None)  # PIL's own guard still refuses
    assert "too large" in one_line_naming(err, path) and "10,000 megapixels" in str(err.value)


def truncated_png(tmp_path):
    Image.fromarray(rand8(64, 64)).save(tmp_path / "t.png")
    return (tmp_path / "t.png").read_bytes()


def truncated_jpeg(tmp_path):
    Image.fromarray(rand8(64, 64)).save(tmp_path / "t.jpg", quality=90)
    return (tmp_path / "t.jpg").read_bytes()


@pytest.mark.parametrize("make", [truncated_png, truncated_jpeg])
def test_truncated_files_are_refused_by_name(tmp_path, make):
    data = make(tmp_path)
    path = tmp_path / "photo.img"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert one_line_naming(err, path) == f"{path}: truncated image file"


@pytest.mark.parametrize("case, reason", [
    ("empty", "empty file"), ("folder", "is a folder"), ("missing", "no such file"),
    ("text", "not an image file"), ("junk_png", "cannot read image"),
])
def test_unreadable_inputs_give_one_line_errors_naming_the_file(tmp_path, case, reason):
    path = tmp_path / f"{case}.png"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "folder":
        path.mkdir()
    elif case == "text":
        path.write_text("hello, not an image\n")
    elif case == "junk_png":  # valid header, corrupt compressed pixels
        ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", b"\x78\x9c" + b"\xff" * 64) + chunk(b"IEND", b""))
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert reason in one_line_naming(err, path)
    assert isinstance(err.value, ValueError)


def test_bytes_loader_shares_the_checks_and_names_the_upload(tmp_path):
    with pytest.raises(ImageError) as err:
        load_image_bytes(truncated_png(tmp_path)[:300], "upload.png")
    assert str(err.value) == "upload.png: truncated image file"
    loaded = load_image_bytes((tmp_path / "t.png").read_bytes(), "upload.png")
    assert loaded.path is None and torch.equal(loaded.rgb, load_image(tmp_path / "t.png").rgb)


def test_inputs_are_never_modified(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(rand8(9, 5, 4), "RGBA").save(tmp_path / "in.png", exif=exif.tobytes())
    before = hashlib.sha256((tmp_path / "in.png").read_bytes()).hexdigest()
    stat = os.stat(tmp_path / "in.png")
    loaded = load_image(tmp_path / "in.png")
    loaded.save(tmp_path / "out.png", loaded.rgb)
    assert hashlib.sha256((tmp_path / "in.png").read_bytes()).hexdigest() == before
    assert os.stat(tmp_path / "in.png").st_mtime_ns == stat.st_mtime_ns


# ---------------------------------------------------------------------------------- saving


def test_8bit_save_rounds_to_nearest(tmp_path):
    k = np.arange(256, dtype=np.float32)
    x = torch.from_numpy(np.stack([(k + 0.49) / 255, (k - 0.49) / 255, k / 255]).clip(0, 1))[:, None, :][None]
    out = save_png(tmp_path / "r.png", x)
    assert np.array_equal(stored(out)[0], np.stack([k, k, k], axis=1).astype(np.uint8))


def test_metadata_and_version_are_embedded(tmp_path):
    from advdm import __version__

    metadata = {"advdm": "eps=8 steps=50", "title": "Łódź ☀"}  # the second needs UTF-8 (iTXt)
    out = save_png(tmp_path / "m.png", torch.zeros(1, 3, 2, 2), metadata=metadata)
    meta = images.read_png_metadata(out)
    assert meta["advdm"] == "eps=8 steps=50" and meta["title"] == "Łódź ☀"
    assert meta["Software"] == f"advdm {__version__}"


def test_png_bytes_is_what_save_png_writes(tmp_path):
    x = as_tensor(rand8(5, 6), 255)
    out = save_png(tmp_path / "s.png", x, metadata={"a": "b"})
    assert out.read_bytes() == png_bytes(x, metadata={"a": "b"})


def test_existing_file_is_not_overwritten_unless_asked(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"keep me")
    with pytest.raises(ImageError) as err:
        save_png(target, torch.zeros(1, 3, 2, 2))
    assert "already exists" in one_line_naming(err, target) and target.read_bytes() == b"keep me"
    save_png(target, torch.ones(1, 3, 2, 2), overwrite=True)
    assert stored(target).min() == 255


def test_the_input_is_never_the_output_even_with_overwrite(tmp_path, monkeypatch):
    Image.fromarray(rand8(3, 3)).save(tmp_path / "art.png")
    before = (tmp_path / "art.png").read_bytes()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ImageError) as err:
        save_png("sub/../art.png", torch.zeros(1, 3, 3, 3), overwrite=True, source=tmp_path / "art.png")
    assert "input" in str(err.value) and (tmp_path / "art.png").read_bytes() == before


def test_non_png_output_name_is_refused(tmp_path):
    with pytest.raises(ImageError):
        save_png(tmp_path / "out.jpg", torch.zeros(1, 3, 2, 2))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fail", ["create", "write", "rename"])
def test_failed_save_leaves_no_file_behind(tmp_path, monkeypatch, fail):
    def boom(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images.os, {"create": "open", "write": "fsync", "rename": "replace"}[fail], boom)
    with pytest.raises(ImageError) as err:
        save_png(tmp_path / "out.png", torch.zeros(1, 3, 2, 2))
    assert "Permission denied" in one_line_naming(err, tmp_path / "out.png")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder_is_reported(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ImageError):
            save_png(tmp_path / "out.png", torch.zeros(1, 3, 2, 2))
        assert list(tmp_path.iterdir()) == []
    finally:
        tmp_path.chmod(0o700)


def test_successful_save_leaves_only_the_output(tmp_path):
    save_png(tmp_path / "out.png", torch.zeros(1, 3, 2, 2))
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


# ---------------------------------------------------------------------------------- helpers


def test_output_path_is_always_png():
    from pathlib import Path

    assert images.output_path(Path("in/cat.jpeg"), Path("out")) == Path("out/cat_protected.png")
    assert images.output_path(Path("in/cat.png"), None, suffix="_x") == Path("in/cat_x.png")


@pytest.mark.parametrize("name", ["a.jpg", "a.JPEG", "a.webp"])
def test_lossy_outputs_are_warned_about(name):
    assert "lossy" in images.warn_if_lossy(name) and "a.png" in images.warn_if_lossy(name)


def test_png_output_gets_no_warning():
    assert images.warn_if_lossy("a.png") is None


@pytest.mark.parametrize("downstream", [1.0, 1 - 1e-6])  # 1 - 1e-6: float noise from a later node
def test_truncating_savers_store_the_rounded_byte(downstream):
    k = np.arange(256)
    for offset in (-0.49, -0.2, 0.0, 0.2, 0.49):  # anywhere in each value's rounding cell
        x = torch.from_numpy(((k + offset) / 255).clip(0, 1).astype(np.float32))
        i = 255. * (for_truncating_savers(x) * downstream).cpu().numpy()  # exactly as ComfyUI's SaveImage
        assert np.array_equal(np.clip(i, 0, 255).astype(np.uint8), k)
