"""The mimicry check (advdm/evaluation/mimicry.py) and its `advdm mimicry` command: the
learned fraction with its across-seed interval, no fraction when the clean fine-tune did
not learn, bad input named; on the test-bed, the done-when (clean passed as protected gives
a fraction whose interval contains 1, and the model is bit-identical afterwards)."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from advdm.cli import main
from advdm.evaluation.mimicry import MimicryConfig, halves, mimicry_check
from advdm.evaluation.stats import ratio_across_units
from advdm.mimic.finetune import FinetuneConfig
from advdm.images import save_png

from sample_images import smooth_image
from test_lora import assert_as_before, snapshot

ROOT = Path(__file__).resolve().parents[1]
# 3 seeds: with 2, Student's t has 1 dof (12.7) and even a clear drop is not "clearly positive"
QUICK = MimicryConfig(seeds=3, draws=16, finetune=FinetuneConfig(steps=6, lr=1e-2, rank=4))

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


def test_no_fraction_when_the_clean_fine_tune_learned_nothing(tiny):
    train = [smooth_image(32, 32, seed=s) for s in range(2)]
    config = MimicryConfig(seeds=3, draws=8, finetune=FinetuneConfig(steps=1, lr=1e-9, rank=1))
    m = mimicry_check(tiny, train, [smooth_image(32, 32, seed=9)], train, config)
    assert not m["learned"] and m["learned_fraction"] is None and m["learned_fraction_noise_low"] is None


def test_bad_input_is_named(tiny):
    x = smooth_image(32, 32)
    with pytest.raises(ValueError, match="2 training images but 1 protected"):
        mimicry_check(tiny, [x, x], [x], [x], QUICK)
    with pytest.raises(ValueError, match="training image 1 is"):
        mimicry_check(tiny, [x], [x], [smooth_image(32, 40)], QUICK)
    with pytest.raises(ValueError, match="too narrow"):
        halves(smooth_image(8, 8), 8)


def test_cli_json_and_the_one_image_split(tmp_path, capsys):
    a = tmp_path / "a.png"
    save_png(a, smooth_image(32, 64))
    args = ["mimicry", "--train", str(a), "--protected", str(a), "--checkpoint", "builtin:tiny",
            "--steps", "6", "--lr", "1e-2", "--seeds", "3", "--draws", "16", "--json"]
    assert main(args) == 0
    m = json.loads(capsys.readouterr().out)
    assert "right halves" in m["held_out_note"] and m["held_out_images"] == 1 and m["seeds"] == 3
    assert m["learned_fraction"] == pytest.approx(1.0)


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
    config = MimicryConfig(seeds=3, draws=16, finetune=FinetuneConfig(steps=6, lr=3e-3))
    m = mimicry_check(testbed, train, held, train, config)
    assert m["learned"], m  # the test-bed's clean LoRA does learn the held-out style's images
    assert m["learned_fraction_low"] <= 1 <= m["learned_fraction_high"]
    assert_as_before(testbed.denoiser_network, before)
