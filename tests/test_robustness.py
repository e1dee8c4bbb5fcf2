"""The robustness table, and every way of crafting keeping size and budget, on the builtin
tiny model at a small analogue of a large image (128 px image, R = 32: the 4x downscale
of a 2048 px image to SD1.x's 512)."""
import pytest

from advdm import ProtectConfig, protect
from advdm.evaluation.robustness import (
    default_transforms,
    format_robustness,
    protect_upsampled,
    robustness,
)
from sample_images import smooth_image

SIZE, R = 128, 32
BUDGET = dict(epsilon=16, step_size=2, steps=5, seed=0, resolution=R)


def test_table_rows_skips_and_tiles(tiny):
    names = [n for n, _ in default_transforms(tiny)]
    assert names[0] == "none" and "resize 512" in names and "jpeg 85" in names and "random crop 128" in names
    image = smooth_image(96, 80, seed=1)
    protected = protect(tiny, image, ProtectConfig(view="full", steps=1, epsilon=4))
    rows_done = []
    res = robustness(tiny, image, protected, samples=2, max_samples=2, resolution=32,
                     transforms=["none", "resize 32", "resize 512", "centre crop 32", "jpeg 85", "blur 1"],
                     progress=lambda done, total: rows_done.append((done, total)))
    assert rows_done == [(k, 6) for k in range(1, 7)]  # one call per row, skipped ones included
    assert res["resize 512"] == {"skipped": "image smaller"}
    assert res["resize 32"]["size"] == (38, 32)
    assert res["centre crop 32"]["size"] == (32, 32)
    assert res["jpeg 85"]["size"] == (96, 80)
    assert all(r["loss_clean"] > 0 for r in res.values() if not r.get("skipped"))
    text = format_robustness(res)
    assert "resize 512" in text and "skipped" in text and "x" in text
    with pytest.raises(ValueError):
        robustness(tiny, image, protected, transforms=["sharpen"])


def test_large_images_are_scored_as_the_mimic_sees_them(tiny):
    """Above 1.5x the training resolution every row scores training views at R, not the
    native image: the encoder never sees more than a bucket of about R^2 pixels."""
    image = smooth_image(300, 200, seed=3)
    protected = protect(tiny, image, ProtectConfig(view="full", steps=1, epsilon=4))
    seen = []
    encode = tiny.encode

    def spy(pixels):
        seen.append(tuple(pixels.shape[-2:]))
        return encode(pixels)

    model = type(tiny)(**{**tiny.__dict__, "encode": spy})
    rows = robustness(model, image, protected, samples=2, max_samples=2, resolution=32, transforms=["none", "jpeg 85"])
    assert seen and max(h * w for h, w in seen) <= 40 * 32  # a 40x24 bucket or a 32x32 crop
    assert rows["none"]["view"] == "train" and rows["none"]["views"] == 8
    assert "32 px fine-tune" in rows["none"]["scored"]
    assert "  train   " in format_robustness(rows)  # the table says how each row was scored
    again = robustness(model, image, protected, samples=2, max_samples=2, resolution=32, transforms=["none"])
    assert again["none"]["gain"] == rows["none"]["gain"]  # fixed views and draws
    full = robustness(model, image, protected, samples=2, max_samples=2, resolution=32, view="full", transforms=["none"])
    assert full["none"]["view"] == "full" and max(h for h, w in seen) >= 300  # native (padded to the multiple)


# The strength comparisons of issue 7 (training views vs native and upsampled PGD after a
# downscale; JPEG EOT after JPEG) are not established on the random-weight tiny model: its
# loss moves by about 1 % under any attack, with a seed-dependent sign. They live in
# bench/robustness.py until a model with real structure exists (issue 8).


@pytest.fixture(scope="module")
def crafted(tiny):
    image = smooth_image(SIZE, SIZE, seed=2)
    return image, {
        "train": protect(tiny, image, ProtectConfig(view="train", **BUDGET)),
        "train+jpeg": protect(tiny, image, ProtectConfig(view="train", eot_jpeg=75, eot_prob=0.75, **BUDGET)),
        "native": protect(tiny, image, ProtectConfig(view="full", **BUDGET)),
        "upsampled": protect_upsampled(tiny, image, ProtectConfig(**BUDGET), R),
    }


def test_all_keep_size_and_budget(crafted):
    image, outs = crafted
    for out in outs.values():
        assert out.shape == image.shape
        assert ((out - image).abs() * 255).round().max() <= BUDGET["epsilon"]
