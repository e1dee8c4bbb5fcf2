"""The command line as a user runs it, on the builtin tiny model."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advdm.cli import main
from advdm.images import read_png_metadata

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--checkpoint", "builtin:tiny", "--steps", "4"]


def write(path, array, mode=None):
    Image.fromarray(array, mode).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    rgb = write(tmp_path / "art.png", rng.integers(0, 256, (45, 67, 3), dtype=np.uint8))
    rgba = write(tmp_path / "sticker.png", rng.integers(0, 256, (30, 20, 4), dtype=np.uint8), "RGBA")
    return rgb, rgba


def pixels(path):
    return np.asarray(Image.open(path)).astype(int)


def test_protect_keeps_size_alpha_and_budget_on_the_saved_file(images, tmp_path):
    rgb, rgba = images
    before = rgb.read_bytes(), rgba.read_bytes()
    assert main(["protect", str(rgb), str(rgba), "-o", str(tmp_path / "out"), "--epsilon", "6", *FAST]) == 0
    for src in images:
        out = tmp_path / "out" / f"{src.stem}_protected.png"
        a, b = pixels(src), pixels(out)
        assert a.shape == b.shape
        assert 0 < np.abs(a[..., :3] - b[..., :3]).max() <= 6
        if a.shape[-1] == 4:
            assert (a[..., 3] == b[..., 3]).all()
    assert (rgb.read_bytes(), rgba.read_bytes()) == before


def test_parameters_and_version_are_embedded(images, tmp_path):
    main(["protect", str(images[0]), "-o", str(tmp_path), "--preset", "fast", "--checkpoint", "builtin:tiny",
          "--method", "sds", "--seed", "3"])
    meta = json.loads(read_png_metadata(tmp_path / "art_protected.png")["advdm"])
    assert meta["method"] == "sds" and meta["seed"] == 3 and meta["steps"] == 30 and meta["epsilon"] == 8
    assert meta["version"] and meta["checkpoint"] == "builtin:tiny"


def test_same_seed_same_file(images, tmp_path):
    for out in ("x", "y"):
        main(["protect", str(images[0]), "-o", str(tmp_path / out), "--seed", "1", *FAST])
    assert (pixels(tmp_path / "x" / "art_protected.png") == pixels(tmp_path / "y" / "art_protected.png")).all()


def test_a_bad_file_is_reported_and_the_batch_goes_on(images, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code = main(["protect", str(bad), str(images[0]), "-o", str(tmp_path / "out"), *FAST])
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.png" in err and "Traceback" not in err
    assert (tmp_path / "out" / "art_protected.png").exists()
    assert not (tmp_path / "out" / "broken_protected.png").exists()


def test_existing_output_is_kept_unless_overwrite(images, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "art_protected.png"
    target.write_bytes(b"keep me")
    assert main(["protect", str(images[0]), "-o", str(out), *FAST]) == 1
    assert target.read_bytes() == b"keep me"
    assert "already exists" in capsys.readouterr().err
    assert main(["protect", str(images[0]), "-o", str(out), "--overwrite", *FAST]) == 0
    assert pixels(target).shape == (45, 67, 3)


def test_a_folder_of_images_is_expanded(images, tmp_path):
    assert main(["protect", str(tmp_path), "-o", str(tmp_path / "out"), *FAST]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["advdm-manifest.rank-0.jsonl", "art_protected.png",
                                                                     "sticker_protected.png"]


def test_lossy_format_warns_and_writes_png(images, tmp_path, capsys):
    assert main(["protect", str(images[0]), "-o", str(tmp_path / "out"), "--format", "jpg", *FAST]) == 0
    assert "lossy" in capsys.readouterr().err
    assert (tmp_path / "out" / "art_protected.png").exists()


def test_mask_limits_the_change(images, tmp_path):
    mask = np.zeros((45, 67), dtype=np.uint8)
    mask[:, :30] = 255
    write(tmp_path / "mask.png", mask)
    main(["protect", str(images[0]), "-o", str(tmp_path / "out"), "--mask", str(tmp_path / "mask.png"), *FAST])
    diff = np.abs(pixels(images[0]) - pixels(tmp_path / "out" / "art_protected.png")).max(axis=-1)
    assert diff[:, 30:].max() == 0 and diff[:, :30].max() > 0


def test_measure_json(images, tmp_path, capsys):
    main(["protect", str(images[0]), "-o", str(tmp_path / "out"), "--epsilon", "8", *FAST])
    capsys.readouterr()
    assert main(["measure", str(images[0]), str(tmp_path / "out" / "art_protected.png"),
                 "--checkpoint", "builtin:tiny", "--json", "--samples", "4", "--max-samples", "8"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["linf"] == pytest.approx(8, abs=1e-3)
    assert {"loss_clean", "loss_protected", "loss_noise", "psnr", "ssim"} <= set(result)
    # the intervals beside the flat figures; the draws used; the verdict as a boolean
    assert result["gain_low"] <= result["gain"] <= result["gain_high"]
    assert result["gain_noise_low"] <= result["gain_noise"] <= result["gain_noise_high"]
    assert result["samples"] in (4, 8) and result["protects"] is False  # random weights protect nothing


def test_measure_text_says_noise_is_not_protection(images, tmp_path, capsys):
    """Same-budget noise passed as the protected image: the verdict is 'not distinguishable'."""
    from advdm.evaluation.measure import noise_control
    from advdm.images import load_image

    original = load_image(images[0]).rgb
    decoy = noise_control(original, 8, seed=99)
    write(tmp_path / "decoy.png", (decoy[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    assert main(["measure", str(images[0]), str(tmp_path / "decoy.png"), "--checkpoint", "builtin:tiny",
                 "--max-samples", "32"]) == 0
    out = capsys.readouterr().out
    assert "95% CI" in out and "not distinguishable from same-budget noise" in out


def test_measure_refuses_different_sizes(images, capsys):
    assert main(["measure", str(images[0]), str(images[1]), "--checkpoint", "builtin:tiny"]) == 2
    assert "differs" in capsys.readouterr().err


def test_bad_checkpoint_is_one_line(images, tmp_path, capsys):
    assert main(["protect", str(images[0]), "-o", str(tmp_path), "--checkpoint", str(tmp_path / "none.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "none.safetensors" in err and "\n" not in err


def test_selftest_from_a_shell():
    run = subprocess.run([sys.executable, "-m", "advdm", "selftest"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "selftest passed" in run.stdout


def test_views_and_eot_flags_reach_the_config_and_robustness_is_reported(images, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["protect", str(images[0]), "-o", str(out), "--view", "train", "--resolution", "32",
                 "--eot-jpeg", "80", "--flip", *FAST]) == 0
    meta = json.loads(read_png_metadata(out / "art_protected.png")["advdm"])
    assert (meta["view"], meta["resolution"], meta["eot_jpeg"], meta["flip"]) == ("train", 32, 80, True)
    capsys.readouterr()
    assert main(["measure", str(images[0]), str(out / "art_protected.png"), "--checkpoint", "builtin:tiny",
                 "--robustness", "--resolution", "16", "--samples", "2", "--max-samples", "2", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)["robustness"]
    assert {"jpeg 85", "blur 1", "resize 16", "random crop 16"} <= set(table) and "gain" in table["jpeg 85"]
    assert table["random crop 16"]["size"] == [16, 16]


def test_memory_and_flow_schedule_flags_reach_the_config(images, tmp_path):
    out = tmp_path / "out"
    assert main(["protect", str(images[0]), "-o", str(out), "--checkpoint", "builtin:tiny-flux", "--steps", "2",
                 "--low-memory", "--flow-timesteps", "uniform", "--flow-shift", "1.5"]) == 0
    meta = json.loads(read_png_metadata(out / "art_protected.png")["advdm"])
    assert (meta["low_memory"], meta["flow_timesteps"], meta["flow_shift"]) == (True, "uniform", 1.5)


def test_flow_schedule_is_validated():
    from advdm import ProtectConfig

    with pytest.raises(ValueError, match="flow timesteps"):
        ProtectConfig(flow_timesteps="normal")
    with pytest.raises(ValueError, match="flow shift"):
        ProtectConfig(flow_shift=0)


def test_fine_tune_aware_method_and_its_surrogate_flags_reach_the_file(images, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["protect", str(images[0]), "-o", str(out), "--method", "mist-v2", "--surrogate-every", "2",
                 "--surrogate-steps", "1", "--surrogate-rank", "2", "--surrogate-lr", "0.001", *FAST]) == 0
    meta = json.loads(read_png_metadata(out / "art_protected.png")["advdm"])
    assert (meta["method"], meta["surrogate"], meta["surrogate_every"], meta["surrogate_steps"],
            meta["surrogate_rank"], meta["surrogate_lr"]) == ("mist-v2", True, 2, 1, 2, 0.001)
    assert np.abs(pixels(out / "art_protected.png") - pixels(images[0])).max() <= 12
    capsys.readouterr()
    assert main(["protect", str(images[0]), "-o", str(tmp_path / "bad"), "--method", "anti-dreambooth",
                 "--surrogate-every", "0", *FAST]) != 0
    assert "surrogate_every" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "art_protected.png").exists()
