"""The img2img (SDEdit) check on the tiny model: its figures, intervals and verdict, its
picture, its view of a large image, and its refusals."""
import pytest

from advdm.evaluation.img2img import MIN_SEEDS, format_img2img, img2img_check
from advdm.evaluation.measure import noise_control
from sample_images import smooth_image


def test_clean_passed_as_protected_lands_on_the_clean_edit_and_never_protects(tiny):
    image = smooth_image(32, 32, seed=1)
    m = img2img_check(tiny, image, image.clone(), strengths=(0.3,), seeds=3, steps=2)
    row = m["img2img"][0]
    assert row["distance"] == 0 and row["latent_distance"] == 0  # the same seed: the same edit
    assert row["distance_noise"] > 0 and row["distance_noise_low"] <= row["distance_noise"] <= row["distance_noise_high"]
    assert not row["protects"] and row["difference"] < 0


@pytest.mark.parametrize("decoy_seed", [5, 6])
def test_a_noise_image_passed_as_protected_gets_no_protecting_verdict(tiny, decoy_seed):
    image = smooth_image(32, 32, seed=2)
    m = img2img_check(tiny, image, noise_control(image, 8, seed=decoy_seed), strengths=(0.3, 0.5), seeds=4, steps=2)
    for row in m["img2img"]:
        assert not row["protects"], row
        assert row["difference_low"] <= row["difference"] <= row["difference_high"]


def test_a_seed_reproduces_and_the_picture_holds_inputs_and_edits(tiny):
    image = smooth_image(32, 24, seed=3)
    protected = noise_control(image, 16, seed=9)
    calls = []
    a = img2img_check(tiny, image, protected, strengths=(0.3, 0.5), seeds=2, steps=3,
                      progress=lambda done, total: calls.append((done, total)))
    b = img2img_check(tiny, image, protected, strengths=(0.3, 0.5), seeds=2, steps=3)
    assert [r["distance"] for r in a["img2img"]] == [r["distance"] for r in b["img2img"]]
    assert calls[-1] == (2 * 2 * 3 * 3, 2 * 2 * 3 * 3) and len(calls) == 2 * 2 * 3 * 3
    pic = a["picture"]
    assert pic.shape[:2] == (1, 3) and pic.shape[-2] > 3 * 32 and pic.shape[-1] > 3 * 24  # 3 rows, input + 2 edits
    assert a["img2img"][0]["verdict"].startswith("too few seeds")  # 2 < MIN_SEEDS
    text = format_img2img(a)
    assert "strength 0.3" in text and "strength 0.5" in text and "95% CI" in text and "own size" in text
    assert MIN_SEEDS == 3


def test_a_large_image_is_edited_at_the_training_area(tiny):
    r = tiny.train_resolution
    image = smooth_image(4 * r, 2 * r, seed=4)
    m = img2img_check(tiny, image, noise_control(image, 8), strengths=(0.5,), seeds=1, steps=1)
    h, w = m["size"]
    assert h * w <= 1.3 * r * r and h > w and f"as a {r} px img2img run" in m["scored"]
    full = img2img_check(tiny, image, noise_control(image, 8), strengths=(0.5,), seeds=1, steps=1, view="full")
    assert full["size"] == [4 * r, 2 * r]


def test_bad_requests_are_refused(tiny):
    image = smooth_image(32, 32)
    with pytest.raises(ValueError, match="strengths"):
        img2img_check(tiny, image, image, strengths=(0.0,))
    with pytest.raises(ValueError, match="differ in size"):
        img2img_check(tiny, image, smooth_image(32, 24))
    with pytest.raises(ValueError, match="seeds"):
        img2img_check(tiny, image, image, seeds=0)
    with pytest.raises(ValueError, match="decoder"):
        img2img_check(type(tiny)(**{**tiny.__dict__, "decode": None}), image, image)


def test_cli_json_contract_and_the_picture_on_disk(tmp_path, capsys):
    """measure --img2img --json: one entry per strength with the issue's keys; the picture
    is written beside the protected image, kept unless --overwrite, never over an input."""
    import json

    import numpy as np
    from PIL import Image

    from advdm.cli import main

    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    protected = np.clip(clean.astype(int) + rng.integers(-8, 9, clean.shape), 0, 255).astype(np.uint8)
    Image.fromarray(clean).save(tmp_path / "art.png")
    Image.fromarray(protected).save(tmp_path / "art_protected.png")
    args = ["measure", str(tmp_path / "art.png"), str(tmp_path / "art_protected.png"), "--checkpoint", "builtin:tiny",
            "--samples", "4", "--max-samples", "4", "--img2img", "--img2img-strengths", "0.3,0.5",
            "--img2img-seeds", "3", "--img2img-steps", "2", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["img2img"]
    assert [r["strength"] for r in rows] == [0.3, 0.5]
    keys = {"strength", "distance", "distance_low", "distance_high", "distance_noise", "distance_noise_low",
            "distance_noise_high", "seeds", "verdict", "protects", "picture"}
    assert all(keys <= set(r) for r in rows) and all(r["seeds"] == 3 for r in rows)
    picture = tmp_path / "art_protected_img2img.png"
    assert rows[0]["picture"] == str(picture) and Image.open(picture).size[0] > 3 * 48
    assert result["view"] == "full" and "own size" in result["scored"]
    assert main(args) == 2 and "already exists" in capsys.readouterr().err  # kept
    assert main(args + ["--overwrite"]) == 0
    bad = ["measure", str(tmp_path / "art.png"), str(tmp_path / "art_protected.png"), "--checkpoint", "builtin:tiny",
           "--img2img", "--img2img-strengths", "0.3,x"]
    assert main(bad) == 2 and "--img2img-strengths" in capsys.readouterr().err
