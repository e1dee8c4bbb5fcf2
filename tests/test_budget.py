"""The perceptual budget (advdm.attack.budget): both bounds on the saved file, change kept off
flat areas, the option in the CLI; the visibility figures and the change map."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from advdm.attack.budget import BUDGETS, jnd, pixel_bound
from advdm.attack.pgd import ProtectConfig, protect
from advdm.cli import main
from advdm.evaluation import visibility
from advdm.evaluation.measure import format_measurement, measure
from advdm.images import load_image, read_png_metadata, save_png
from sample_images import half_flat_half_texture, natural_scene

FAST = ["--checkpoint", "builtin:tiny", "--steps", "4"]
EPS = 12


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    pass


def _over(saved: torch.Tensor, original: torch.Tensor, bound) -> float:
    """How far (1/255) the saved change goes beyond the bound anywhere (<= 0: within)."""
    return ((saved - original).abs() * 255 - bound).max().item()


def _write_rgba(path, rgb: torch.Tensor, levels: int):
    """An RGBA PNG of rgb at 8 or 16 bits, with a graded alpha."""
    h, w = rgb.shape[-2:]
    alpha = (np.linspace(0, levels, h * w).reshape(h, w)).astype(np.uint8 if levels == 255 else np.uint16)
    save_png(path, (rgb * levels).round() / levels, alpha=alpha, levels=levels)
    return alpha


def test_the_map_is_small_on_flat_mid_tones_and_large_in_texture():
    x = half_flat_half_texture(64, 64, seed=3)
    j = jnd(x)[0, 0]
    assert j.shape == (64, 64) and j.min() >= 3 - 1e-4  # mid-grey's luminance threshold is 3/255
    flat, textured = j[:, 4:28].mean(), j[:, 36:60].mean()
    assert flat < 6 and textured > 2 * flat
    dark, bright = torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)
    mid = torch.full((1, 3, 16, 16), 0.5)
    assert jnd(dark).mean() > jnd(bright).mean() > jnd(mid).mean()  # luminance adaptation
    assert pixel_bound(x, 8.0, "uniform") == 8.0
    assert pixel_bound(x, 8.0, "perceptual").max() <= 8.0  # capped by epsilon


@pytest.mark.parametrize("levels", [255, 65535])
def test_saved_file_keeps_both_bounds_with_alpha(tiny, tmp_path, levels):
    """Core: protect, save through LoadedImage (its alpha and bit depth), read back: every value
    within epsilon and within the per-pixel bound; the uniform budget goes beyond that bound, so
    the check has something to catch."""
    alpha = _write_rgba(tmp_path / "in.png", natural_scene(40, 48, seed=1), levels)
    image = load_image(tmp_path / "in.png")
    assert image.levels == levels
    bound = pixel_bound(image.rgb, EPS, "perceptual")
    assert bound.min() < EPS / 2  # the map bounds somewhere well below epsilon
    saved = {}
    for budget in BUDGETS:
        out = image.save(tmp_path / f"{budget}.png", protect(tiny, image.rgb, ProtectConfig(epsilon=EPS, steps=6, budget=budget),
                                                             levels=levels))
        back = load_image(out)
        assert np.array_equal(back.alpha, alpha) and back.levels == levels
        saved[budget] = back.rgb
    assert _over(saved["perceptual"], image.rgb, bound) <= 1e-4
    assert _over(saved["perceptual"], image.rgb, EPS) <= 1e-4
    assert _over(saved["uniform"], image.rgb, bound) > 1  # uniform: beyond the map
    assert (saved["perceptual"] != image.rgb).any()


@pytest.mark.parametrize("levels", [255, 65535])
def test_cli_protect_perceptual_keeps_both_bounds_and_records_the_budget(tmp_path, levels):
    src = tmp_path / "art.png"
    alpha = _write_rgba(src, half_flat_half_texture(32, 40, seed=2), levels)
    assert main(["protect", str(src), "-o", str(tmp_path / "out"), "--epsilon", str(EPS), "--budget", "perceptual",
                 *FAST]) == 0
    out = tmp_path / "out" / "art_protected.png"
    original, saved = load_image(src), load_image(out)
    assert np.array_equal(saved.alpha, alpha) and saved.levels == levels
    assert _over(saved.rgb, original.rgb, pixel_bound(original.rgb, EPS, "perceptual")) <= 1e-4
    assert (saved.rgb != original.rgb).any()
    assert json.loads(read_png_metadata(out)["advdm"])["budget"] == "perceptual"


def test_cli_removes_a_file_that_breaks_the_per_pixel_bound(tmp_path, monkeypatch, capsys):
    """The read-back check knows the per-pixel bound: a result within epsilon but beyond the
    map (here: a uniform attack passed off as perceptual) is refused and removed."""
    import advdm.cli as cli

    real = cli.protect
    monkeypatch.setattr(cli, "protect", lambda model, image, config, **kw: real(
        model, image, ProtectConfig(epsilon=config.epsilon, steps=config.steps), **kw))
    src = tmp_path / "art.png"
    save_png(src, natural_scene(32, 32, seed=4))
    assert main(["protect", str(src), "-o", str(tmp_path / "out"), "--epsilon", str(EPS), "--budget", "perceptual",
                 *FAST]) == 1
    assert "breaks the budget" in capsys.readouterr().err
    assert not (tmp_path / "out" / "art_protected.png").exists()


def test_change_stays_off_the_flat_half(tiny):
    """Half smooth gradient, half texture: the perceptual budget's mean change on the flat half is
    at most half that on the textured half; the uniform budget's is about equal."""
    x = half_flat_half_texture(64, 64, seed=0)
    ratios = {}
    for budget in BUDGETS:
        change = (protect(tiny, x, ProtectConfig(epsilon=16, steps=8, budget=budget)) - x).abs().mean(1)[0]
        ratios[budget] = (change[:, :32].mean() / change[:, 32:].mean()).item()
    assert ratios["perceptual"] <= 0.5, ratios
    assert 0.8 <= ratios["uniform"] <= 1.25, ratios


def test_bad_budget_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(ValueError, match="budget"):
        ProtectConfig(budget="invisible")
    src = tmp_path / "art.png"
    save_png(src, natural_scene(16, 16))
    with pytest.raises(SystemExit) as e:
        main(["protect", str(src), "-o", str(tmp_path / "out"), "--budget", "invisible", *FAST])
    assert e.value.code == 2 and "--budget" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_uniform_budget_leaves_the_settings_hash_as_it_was():
    """Batches resume by a hash of as_dict(): the default budget must not change it."""
    assert "budget" not in ProtectConfig().as_dict()
    assert ProtectConfig(budget="perceptual").as_dict()["budget"] == "perceptual"


# --- visibility figures and the change map --------------------------------------------------------


def test_ms_ssim_is_one_for_identical_and_falls_with_visible_change():
    x = natural_scene(64, 64, seed=5)
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(x.shape, generator=g) * 2 - 1
    values = [visibility.ms_ssim(x, (x + noise * e / 255).clamp(0, 1))[0] for e in (0, 4, 16)]
    assert values[0] == pytest.approx(1.0, abs=1e-6)
    assert 1 > values[1] > values[2] > 0.2
    assert visibility.ms_ssim(x, x)[1] == "kornia"


def test_ms_ssim_in_bands_is_the_whole_image_figure(monkeypatch):
    """Large images are filtered band by band (memory): the figure must not change."""
    x = natural_scene(70, 50, seed=9)
    y = (x + 6 / 255 * (torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) * 2 - 1)).clamp(0, 1)
    whole = visibility.ms_ssim(x, y)[0]
    monkeypatch.setattr(visibility, "BAND", 9)
    assert visibility.ms_ssim(x, y)[0] == pytest.approx(whole, abs=1e-6)


def test_ms_ssim_is_kornias_ms_ssim_loss():
    """Separable filters, banded: the same figure as kornia's MS_SSIMLoss (where kornia has its
    channel/scale fix) on the reflect-padded image, border cropped."""
    import torch.nn.functional as F
    from kornia.losses import MS_SSIMLoss

    if "_load_from_state_dict" not in vars(MS_SSIMLoss):
        pytest.skip("this kornia's MS_SSIMLoss predates its channel/scale fix")
    x = natural_scene(70, 50, seed=3)
    y = (x + 5 / 255 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    sigmas, pad = (0.5, 1.0, 2.0), 4  # the scales that fit a 50 px side
    loss = MS_SSIMLoss(sigmas=sigmas, alpha=1.0, compensation=1.0, reduction="none")
    a, b = (F.pad(t.transpose(0, 1), (pad,) * 4, mode="reflect") for t in (x, y))
    expected = 1 - loss(b, a)[:, pad:-pad, pad:-pad].mean().item()
    assert visibility.ms_ssim(x, y)[0] == pytest.approx(expected, abs=1e-5)  # float32 sums in kornia


def test_ms_ssim_without_kornia_is_nan_and_says_why(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "kornia.filters", None)  # import fails as if kornia were missing
    x = natural_scene(32, 32, seed=5)
    value, library = visibility.ms_ssim(x, x)
    assert value != value and library == "unavailable: needs kornia"


def test_measure_reports_ms_ssim(tiny):
    x = natural_scene(32, 32, seed=6)
    y = protect(tiny, x, ProtectConfig(epsilon=8, steps=3))
    m = measure(tiny, x, y, samples=4, max_samples=4)
    assert m["ms_ssim"] == pytest.approx(visibility.ms_ssim(x, y)[0]) and 0 < m["ms_ssim"] < 1
    assert f"MS-SSIM {m['ms_ssim']:.4f} (kornia" in format_measurement(m)


def test_change_map_is_brightest_where_the_change_is_and_grey_elsewhere():
    x = natural_scene(32, 32, seed=7)
    y = x.clone()
    y[..., :8, :8] = (y[..., :8, :8] + 6 / 255).clamp(0, 1)  # a change in one corner only
    y[..., 20:, 20:] = (y[..., 20:, 20:] - 2 / 255).clamp(0, 1)  # a smaller one elsewhere
    m = visibility.change_map(x, y)
    assert m.shape == x.shape and 0 <= m.min() and m.max() <= 1
    red, green, blue = m[0]
    assert red[:8, :8].mean() > red[20:, 20:].mean() > red[10:18, 10:18].mean()  # larger change, brighter
    untouched = m[0, :, 10:18, 10:18]
    assert torch.allclose(untouched[0], untouched[2]) and untouched.max() < 0.36  # dim grey backdrop


def test_cli_measure_writes_the_change_map_and_keeps_an_existing_one(tmp_path, capsys):
    src = tmp_path / "art.png"
    save_png(src, natural_scene(32, 32, seed=8))
    assert main(["protect", str(src), "-o", str(tmp_path), "--epsilon", "8", *FAST]) == 0
    protected = tmp_path / "art_protected.png"
    args = ["measure", str(src), str(protected), "--checkpoint", "builtin:tiny", "--samples", "4", "--max-samples", "4",
            "--change-map"]
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    path = tmp_path / "art_protected_change.png"
    assert result["change_map"] == str(path) and 0 < result["ms_ssim"] < 1
    expected = visibility.change_map(load_image(src).rgb, load_image(protected).rgb)
    assert torch.equal(load_image(path).rgb, (expected * 255).round() / 255)
    before = path.read_bytes()
    assert main(args) == 2  # exists: refused, untouched
    assert "already exists" in capsys.readouterr().err and path.read_bytes() == before
    assert main([*args, "--overwrite"]) == 0
    assert f"change map: {path}" in capsys.readouterr().out
    assert np.asarray(Image.open(path)).shape == (32, 32, 3)
