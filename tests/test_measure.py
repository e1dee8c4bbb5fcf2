"""The measurement's statistics: paired intervals that cover, a verdict that needs its
interval, draws that extend without changing, and what it says on a random-weight model."""
import numpy as np
import pytest
import torch

from advdm.evaluation.measure import (NEGLIGIBLE, DrawLosses, format_measurement, measure, noise_control,
                                      paired_figures)
from advdm.evaluation.stats import ratio_of_means
from sample_images import smooth_image


def _paired(n, ratio, spread, seed):
    """Draws shaped like a diffusion loss: a large shared per-timestep level (log-normal)
    and a small per-image wobble; the protected mean is `ratio` x the clean one."""
    rng = np.random.default_rng(seed)
    level = rng.lognormal(0.0, 1.0, n)
    clean = level * (1 + spread * rng.standard_normal(n))
    protected = ratio * level * (1 + spread * rng.standard_normal(n))
    return torch.tensor(clean), torch.tensor(protected)


def test_ratio_interval_covers_the_true_ratio_95_percent_of_the_time():
    covered = []
    for seed in range(600):
        clean, protected = _paired(16, 1.1, 0.05, seed)
        iv = ratio_of_means(protected, clean)
        covered.append(iv.low <= 1.1 <= iv.high)
    assert 0.92 <= np.mean(covered) <= 0.98


def test_pairing_is_what_makes_the_interval_narrow():
    clean, protected = _paired(64, 1.05, 0.02, 0)
    paired = ratio_of_means(protected, clean)
    unpaired = ratio_of_means(protected, clean[torch.randperm(64, generator=torch.Generator().manual_seed(0))])
    assert paired.half_width < 0.2 * unpaired.half_width
    assert paired.low > 1.0


def _fixed(values):
    return lambda n: values[:n]


def test_the_verdict_needs_the_interval_above_zero():
    """The protected mean is 5% above the control's but the per-draw difference is so noisy
    that its interval holds 0: no verdict, whatever the means say."""
    rng = np.random.default_rng(1)
    clean = torch.tensor(rng.lognormal(0, 1, 16))
    control = clean.clone()
    wobble = torch.tensor(rng.standard_normal(16))
    protected = clean * 1.05 + 0.3 * clean.mean() * (wobble - wobble.mean()) / wobble.std()
    m = paired_figures(_fixed(clean), _fixed(protected), [_fixed(control)] * 2, samples=16, max_samples=16)
    assert m["gain_over_noise"] > NEGLIGIBLE and m["gain"] > m["gain_noise"]
    assert m["gain_over_noise_low"] < 0 < m["gain_over_noise_high"]
    assert not m["protects"] and m["verdict"] == "not distinguishable from same-budget noise"
    # the same rise, measured precisely, is a verdict
    steady = clean * 1.05
    m = paired_figures(_fixed(clean), _fixed(steady), [_fixed(control)] * 2, samples=16, max_samples=16)
    assert m["protects"] and m["verdict"] == "raises the loss beyond same-budget noise"
    # a clear rise smaller than NEGLIGIBLE is reported as such, not as protection
    m = paired_figures(_fixed(clean), _fixed(clean * 1.005), [_fixed(control)] * 2, samples=16, max_samples=16)
    assert m["gain_over_noise_low"] > 0 and not m["protects"] and "not counted" in m["verdict"]


def test_a_noise_image_passed_as_protected_is_not_a_verdict():
    """Paired draws tell two noise images apart (each has its own loss), so the verdict must
    weigh the spread between noise images: a fresh one, passed as the protected image, should
    land inside the interval about 95% of the time."""
    rng = np.random.default_rng(4)
    clean = torch.tensor(rng.lognormal(0, 1, 32))
    fired = 0
    for trial in range(200):
        offsets = 0.01 * rng.standard_normal(5)  # each noise image's own loss level, 1% apart
        controls = [_fixed(clean * (1 + o)) for o in offsets[:4]]
        m = paired_figures(_fixed(clean), _fixed(clean * (1 + offsets[4])), controls, samples=32, max_samples=32)
        fired += m["gain_over_noise_low"] > 0 or m["gain_over_noise_high"] < 0
        assert not m["protects"]
    assert fired <= 0.1 * 200


def test_draws_double_until_the_difference_is_precise_and_say_how_many():
    rng = np.random.default_rng(2)
    clean = torch.tensor(rng.lognormal(0, 1, 256))
    noisy = clean * torch.tensor(1 + 0.05 * rng.standard_normal(256))
    m = paired_figures(_fixed(clean), _fixed(noisy), [_fixed(clean)] * 2, samples=16, max_samples=256, precision=0.01)
    assert 16 < m["samples"] <= 256 and m["samples"] in (32, 64, 128, 256)
    assert m["gain_over_noise_high"] - m["gain_over_noise"] <= 0.01 or m["samples"] == 256
    seen = []
    paired_figures(_fixed(clean), _fixed(noisy), [_fixed(clean)] * 2, samples=16, max_samples=32, precision=1e-9,
                   progress=lambda n, most: seen.append((n, most)))
    # two rounds (16, then 32 draws) of four images each: the bar moves as each image is scored
    assert seen == [(4, 32), (8, 32), (12, 32), (16, 32), (20, 32), (24, 32), (28, 32), (32, 32)]


def test_more_draws_extend_the_same_draws(tiny):
    image = smooth_image(32, 32)
    few = DrawLosses(tiny, image, seed=3).losses(8)
    many = DrawLosses(tiny, image, seed=3).losses(16)
    assert torch.equal(few, many[:8])


def test_random_weights_same_budget_noise_is_not_distinguishable(tiny):
    image = smooth_image(32, 32)
    m = measure(tiny, image, noise_control(image, 8, seed=77), seed=0)
    assert not m["protects"] and m["verdict"] == "not distinguishable from same-budget noise"
    assert m["gain_low"] <= m["gain"] <= m["gain_high"] and m["gain_noise_low"] <= m["gain_noise"] <= m["gain_noise_high"]
    text = format_measurement(m)
    assert "95% CI" in text and "not distinguishable" in text and f"{m['samples']} paired draws" in text


def test_bad_draw_counts_are_refused(tiny):
    image = smooth_image(32, 32)
    with pytest.raises(ValueError, match="samples"):
        measure(tiny, image, image, samples=1)
    with pytest.raises(ValueError, match="samples"):
        measure(tiny, image, image, samples=32, max_samples=16)


def _spied(model):
    """The model, recording the pixel size of everything it encodes."""
    seen = []

    def spy(pixels):
        seen.append(tuple(pixels.shape[-2:]))
        return model.encode(pixels)

    return type(model)(**{**model.__dict__, "encode": spy}), seen


def test_auto_scores_a_large_image_as_the_mimic_sees_it_and_says_so(tiny):
    """4x the training side: training views at R (buckets and crops), one per draw in turn;
    the encoder never sees the native image, and the report names what was scored."""
    r = tiny.train_resolution
    image = smooth_image(4 * r, 3 * r, seed=5)
    model, seen = _spied(tiny)
    m = measure(model, image, noise_control(image, 8, seed=1), samples=8, max_samples=8)
    assert m["view"] == "train" and m["views"] == 8 and m["resolution"] == r
    assert max(h * w for h, w in seen) <= 1.3 * r * r  # buckets of about R^2, crops of R^2
    assert f"as a {r} px fine-tune sees it: 8 aspect buckets and crops" in format_measurement(m)
    again = measure(model, image, noise_control(image, 8, seed=1), samples=8, max_samples=8)
    assert again["gain_over_noise"] == m["gain_over_noise"]  # the same views and draws


def test_full_scores_the_native_image_exactly_as_before(tiny):
    """view full (and auto up to 1.5 R) is the native image on plain per-draw losses."""
    r = tiny.train_resolution
    image = smooth_image(4 * r, 3 * r, seed=5)
    protected = noise_control(image, 8, seed=1)
    model, seen = _spied(tiny)
    m = measure(model, image, protected, samples=8, max_samples=8, view="full")
    assert m["view"] == "full" and set(seen) == {(4 * r, 3 * r)}
    assert m["loss_clean"] == DrawLosses(tiny, image, seed=0).losses(8).mean().item()
    small = smooth_image(r, r)
    assert measure(tiny, small, noise_control(small, 8), samples=8, max_samples=8)["view"] == "full"
    wide = smooth_image(r, 2 * r, seed=6)
    tiled = measure(tiny, wide, noise_control(wide, 8, seed=1), samples=8, max_samples=8, view="tiled")
    assert tiled["view"] == "tiled" and tiled["views"] == 3 and f"3 tiles of {r} px" in tiled["scored"]


def test_training_views_extend_without_changing_and_refuse_unknown_rules(tiny):
    from advdm.evaluation.measure import ViewedLosses
    from advdm.mimic.views import judged_views
    r = tiny.train_resolution
    image = smooth_image(4 * r, 4 * r, seed=2)
    views = judged_views(tiny, image.shape[-2:], "auto", None, seed=3)
    assert [v.box for v in views.views] == [v.box for v in judged_views(tiny, image.shape[-2:], "auto", None, 3).views]
    few = ViewedLosses(tiny, image, views, seed=3).losses(5)
    many = ViewedLosses(tiny, image, views, seed=3).losses(19)
    assert torch.equal(few, many[:5])
    with pytest.raises(ValueError, match="view must be one of"):
        measure(tiny, image, image, view="crops")
