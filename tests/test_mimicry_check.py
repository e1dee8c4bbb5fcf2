"""The mimicry check (advdm/evaluation/mimicry.py) and its `advdm mimicry` command: the
learned fraction with its across-seed interval, no fraction when the clean fine-tune did
not learn, bad input named; on the test-bed, the done-when (clean passed as protected gives
a fraction whose interval contains 1, and the model is bit-identical afterwards). The
pictures (advdm/evaluation/pictures.py): a labelled four-row grid of the seeded pictures,
the picture shift's verdict silent on clean and on noise passed as protected, seeds that
reproduce, progress that counts the sampler's steps."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from advdm.cli import main
from advdm.evaluation import pictures
from advdm.evaluation.measure import noise_control
from advdm.evaluation.mimicry import MimicryConfig, format_mimicry, halves, mimicry_check, progress_total
from advdm.evaluation.stats import ratio_across_units
from advdm.mimic.finetune import FinetuneConfig
from advdm.mimic.sampler import sample
from advdm.images import load_image, save_png

from sample_images import smooth_image
from test_lora import assert_as_before, snapshot

ROOT = Path(__file__).resolve().parents[1]
# 3 seeds: with 2, Student's t has 1 dof (12.7) and even a clear drop is not "clearly positive"
QUICK = MimicryConfig(seeds=3, draws=16, finetune=FinetuneConfig(steps=6, lr=1e-2, rank=4),
                      pictures=2, picture_steps=3, picture_size=32)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_ratio_across_units_is_the_delta_method_t_interval():
    num, den = torch.tensor([0.5, 0.7, 0.6]), torch.tensor([1.0, 1.1, 0.9])
    r = ratio_across_units(num, den)
    assert r.estimate == pytest.approx(0.6)
    se = (num - 0.6 * den).std() / (math.sqrt(3) * 1.0)
    assert r.high - r.estimate == pytest.approx(4.3027 * se.item(), rel=1e-3)  # Student's t, 2 dof
    same = ratio_across_units(den, den)
    assert (same.low, same.estimate, same.high) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="two paired units"):
        ratio_across_units(num[:1], den[:1])


def test_clean_as_protected_gives_one_and_the_json_keys(tiny):
    train = [smooth_image(32, 32, seed=s) for s in range(2)]
    m = mimicry_check(tiny, train, [smooth_image(32, 32, seed=9)], train, QUICK)
    assert m["learned"]
    assert m["learned_fraction"] == pytest.approx(1.0) and m["learned_fraction_low"] <= 1 <= m["learned_fraction_high"]
    for key in ("learned_fraction", "learned_fraction_low", "learned_fraction_high", "learned_fraction_noise",
                "learned_fraction_noise_low", "learned_fraction_noise_high", "loss_base", "loss_clean",
                "loss_protected", "loss_noise", "in_sample_fraction"):
        assert key in m
    assert m["loss_clean"] < m["loss_base"] and len(m["per_seed"]) == 3
    # the same images and seed give the same LoRA, hence the same pictures: no shift, no verdict
    assert m["picture_rmse_protected"] == 0 and m["picture_shift"] == 0 and not m["picture_protects"]
    assert m["picture_rmse_noise"] > 0 and m["picture_rmse_clean_base"] > 0
    assert tuple(m.pop("grid").shape[:2]) == (1, 3)
    json.dumps(m)
    assert "picture shift" in format_mimicry(m) and "no protection" in format_mimicry(m)


def test_the_grid_has_four_labelled_rows_of_the_seeded_pictures_and_seeds_reproduce(tiny):
    """One fine-tune seed, three pictures of 32 px: rows base / clean / protected / noise LoRA,
    each picture where the layout says and equal to the sampler's for its seed (the base row
    to a direct sample() call); labelled rows; progress counts the sampler's steps and each image scored; the same
    config gives the same grid and figures; the model is bit-identical afterwards."""
    train = [smooth_image(32, 32, seed=s) for s in range(2)]
    protected = [noise_control(x, 8, 50 + i) for i, x in enumerate(train)]
    config = MimicryConfig(seeds=1, seed=3, draws=8, finetune=FinetuneConfig(steps=4, lr=1e-2, rank=2),
                           pictures=3, picture_steps=4, picture_size=36)  # 36: rounded down to 32
    before = snapshot(tiny.denoiser_network)
    seen = []
    m = mimicry_check(tiny, train, [smooth_image(32, 32, seed=9)], protected, config,
                      progress=lambda done, total: seen.append((done, total)))
    assert_as_before(tiny.denoiser_network, before)
    # fine-tuning and sampler steps, then 4 models x 3 scored images (1 held out, 2 training) x 2 blocks of 4 draws
    total = 3 * 4 + 4 * (1 + 3) + 4 * 3 * 2
    assert seen[-1] == (total, total)
    steps = [b[0] - a[0] for a, b in zip([(0, total)] + seen, seen)]
    assert steps.count(1) == 3 * 4 + 4 * (1 + 3) and steps.count(2) == 4 * 3  # every step, every image scored
    assert progress_total(config, evaluated=3) == total
    assert m["picture_size"] == [32, 32] and m["picture_seeds"] == [3, 4, 5] and m["pictures"] == 3
    g = m.pop("grid")
    n, h = 3, 32
    row_h = max(h, 12)
    left = pictures.label_width(row_h)
    gap = pictures.GAP
    assert g.shape == (1, 3, gap + 4 * (row_h + gap), left + gap + n * (h + gap))
    assert g.dtype == torch.float32 and 0 <= g.min() and g.max() <= 1

    def cell(row, col):
        top, x0 = gap + row * (row_h + gap), left + gap + col * (h + gap)
        return g[0, :, top:top + h, x0:x0 + h]

    base = sample(tiny, (32, 32), [3, 4, 5], 4)
    assert all(torch.equal(cell(0, c), base[c]) for c in range(n))
    rows = [torch.stack([cell(r, c) for c in range(n)]) for r in range(4)]
    assert not torch.equal(rows[0], rows[1])  # the clean LoRA draws differently from the base model
    labels = [g[0, :, gap + r * (row_h + gap):gap + r * (row_h + gap) + row_h, :left] for r in range(4)]
    assert all((lab < 0.5).any() for lab in labels), "a row without its label"
    assert len({lab.numpy().tobytes() for lab in labels}) == 4, "two rows with the same label"
    assert m["picture_shift"] is not None and not m["picture_protects"] and "one fine-tune seed" in m["picture_verdict"]
    again = mimicry_check(tiny, train, [smooth_image(32, 32, seed=9)], protected, config)
    assert torch.equal(again.pop("grid"), g) and again == m


def test_noise_passed_as_protected_moves_the_pictures_no_more_than_noise(tiny):
    train = [smooth_image(32, 32, seed=s) for s in range(2)]
    noise = [noise_control(x, 16, 99 + i) for i, x in enumerate(train)]
    m = mimicry_check(tiny, train, [smooth_image(32, 32, seed=9)], noise, QUICK)
    assert m["picture_rmse_protected"] > 0 and not m["picture_protects"]
    assert m["picture_shift_low"] <= 1 <= m["picture_shift_high"], m


def test_the_picture_verdict_needs_the_interval_above_noise_and_two_seeds():
    def seeds(protected, noise):
        return [{"protected": torch.tensor(p), "noise": torch.tensor(n), "clean_base": torch.tensor([5.0, 5.0])}
                for p, n in zip(protected, noise)]

    far = seeds([[3.0, 3.2], [2.9, 3.1], [3.1, 3.0]], [[1.0, 1.1], [0.9, 1.0], [1.0, 1.0]])
    f = pictures.picture_figures(far)
    assert f["picture_protects"] and f["picture_shift"] == pytest.approx(3.0, rel=0.05)
    assert not pictures.picture_figures(far[:1])["picture_protects"]  # one seed: no verdict
    same = seeds([[1.0, 1.2], [0.9, 1.0], [1.1, 1.0]], [[1.1, 1.0], [1.0, 0.9], [1.0, 1.2]])
    assert not pictures.picture_figures(same)["picture_protects"]
    slight = seeds([[1.05, 1.05], [1.06, 1.06], [1.05, 1.05]], [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    f = pictures.picture_figures(slight)
    assert f["picture_shift_low"] > 1 and not f["picture_protects"]  # beyond noise, but by under 10%
    zero = seeds([[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]])
    assert pictures.picture_figures(zero)["picture_shift"] is None


def test_no_fraction_when_the_clean_fine_tune_learned_nothing(tiny):
    train = [smooth_image(32, 32, seed=s) for s in range(2)]
    config = MimicryConfig(seeds=3, draws=8, finetune=FinetuneConfig(steps=1, lr=1e-9, rank=1), pictures=0)
    seen = []
    m = mimicry_check(tiny, train, [smooth_image(32, 32, seed=9)], train, config,
                      progress=lambda done, total: seen.append(total))
    assert not m["learned"] and m["learned_fraction"] is None and m["learned_fraction_noise_low"] is None
    assert m["grid"] is None and "picture_shift" not in m  # pictures off: none drawn
    assert set(seen) == {3 * 3 + 3 * 4 * 3 * 2}  # 3 seeds: fine-tuning steps and the scored images' draw blocks
    assert "picture" not in format_mimicry(m)


def test_bad_input_is_named(tiny):
    x = smooth_image(32, 32)
    with pytest.raises(ValueError, match="2 training images but 1 protected"):
        mimicry_check(tiny, [x, x], [x], [x], QUICK)
    with pytest.raises(ValueError, match="training image 1 is"):
        mimicry_check(tiny, [x], [x], [smooth_image(32, 40)], QUICK)
    with pytest.raises(ValueError, match="too narrow"):
        halves(smooth_image(8, 8), 8)
    with pytest.raises(ValueError, match="picture_size must be at least 8"):
        mimicry_check(tiny, [x], [x], [x], MimicryConfig(picture_size=4))
    with pytest.raises(ValueError, match="pictures >= 0 and picture_steps >= 1"):
        mimicry_check(tiny, [x], [x], [x], MimicryConfig(picture_steps=0))


def test_cli_json_the_grid_file_and_the_one_image_split(tmp_path, capsys):
    a = tmp_path / "a.png"
    save_png(a, smooth_image(32, 64))
    out = tmp_path / "report"
    args = ["mimicry", "--train", str(a), "--protected", str(a), "--checkpoint", "builtin:tiny",
            "--steps", "6", "--lr", "1e-2", "--seeds", "3", "--draws", "16", "--json",
            "--pictures", "2", "--picture-steps", "2", "--picture-size", "32", "--output-dir", str(out)]
    assert main(args) == 0
    m = json.loads(capsys.readouterr().out)
    assert "right halves" in m["held_out_note"] and m["held_out_images"] == 1 and m["seeds"] == 3
    assert m["learned_fraction"] == pytest.approx(1.0)
    assert m["grid"] == str(out / "mimicry_grid.png") and m["picture_shift"] == 0
    grid = load_image(m["grid"]).rgb
    assert grid.shape[-2] == 2 + 4 * (32 + 2) and grid.shape[-1] > 2 * 32
    stamp = (out / "mimicry_grid.png").stat().st_mtime_ns
    assert main(args) == 2  # refused before any fine-tune, the file kept
    assert "mimicry_grid.png: already exists (pass --overwrite" in capsys.readouterr().err
    assert (out / "mimicry_grid.png").stat().st_mtime_ns == stamp
    assert main(args[:-6] + ["--pictures", "0", "--output-dir", str(out)]) == 0  # no pictures: nothing written
    assert json.loads(capsys.readouterr().out)["grid"] is None


def test_cli_refuses_mismatched_inputs_naming_them(tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    save_png(a, smooth_image(32, 32))
    save_png(b, smooth_image(32, 40))
    base = ["mimicry", "--checkpoint", "builtin:tiny", "--held-out", str(a)]
    assert main(base + ["--train", str(a), str(a), "--protected", str(a)]) == 2
    assert "--train has 2 images but --protected 1" in capsys.readouterr().err
    assert main(base + ["--train", str(a), "--protected", str(b)]) == 2
    assert f"{b}: size 40x32 differs from {a}" in capsys.readouterr().err
    assert main(base + ["--train", str(a), "--protected", str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err


@pytest.fixture(scope="module")
def testbed():
    from advdm.models.checkpoints import load_model

    return load_model(str(ROOT / "testbed" / "model"), torch.device("cpu"), torch.float32)


def test_on_the_testbed_clean_as_protected_contains_one_and_the_model_is_bit_identical(testbed):
    sys.path.insert(0, str(ROOT / "testbed"))
    import styles

    train = [x[None] for x in styles.batch(styles.HELD_OUT, range(10000, 10002))]
    held = [styles.batch(styles.HELD_OUT, [50000])]
    before = snapshot(testbed.denoiser_network)
    config = MimicryConfig(seeds=3, draws=16, finetune=FinetuneConfig(steps=6, lr=3e-3), pictures=2, picture_steps=8)
    m = mimicry_check(testbed, train, held, train, config)
    assert m["learned"], m  # the test-bed's clean LoRA does learn the held-out style's images
    assert m["learned_fraction_low"] <= 1 <= m["learned_fraction_high"]
    assert m["picture_size"] == [64, 64] and m["picture_shift"] == 0 and not m["picture_protects"]
    assert_as_before(testbed.denoiser_network, before)
