"""The committed test-bed model (testbed/model) through the project's own loader: it has
learned something (much lower loss on its styles' latents than on the same latents
shuffled), and AdvDM at 8/255 raises its loss above clean and above same-budget noise.
A few seconds on a CPU."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "testbed" / "model"
sys.path.insert(0, str(ROOT / "testbed"))

pytestmark = pytest.mark.skipif(not (MODEL / "model_index.json").is_file(), reason="testbed/model not built")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The model is so small that a second thread only costs (badly, on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def testbed(one_thread):
    from advdm.models.checkpoints import load_model

    return load_model(str(MODEL), torch.device("cpu"), torch.float32)


def test_loads_as_a_64px_eps_model(testbed):
    assert testbed.prediction == "eps"
    assert testbed.train_resolution == 64 and testbed.pixel_multiple == 4
    assert testbed.encode(torch.rand(1, 3, 64, 64)).mean.shape == (1, 4, 16, 16)


def _latent_loss(model, z, seed=0, samples=16):
    from advdm.models.draws import Draws
    from advdm.models.interface import diffusion_loss

    draws = Draws(model, seed)
    sigma, noise = draws.sigmas(samples), draws.normal((samples, *z.shape[1:]))
    with torch.no_grad():
        return diffusion_loss(model, z, sigma, noise).mean().item()


def test_it_has_learned_the_structure_of_its_styles(testbed):
    """The denoising loss on a style image's latent is far below that on the same latent
    values spatially shuffled (same statistics, no structure). (In pixel space, uniform
    noise is *not* a fair contrast: the VAE maps it to a nearly flat latent, which is easy
    to denoise - its loss is below that of the styles.)"""
    import styles

    gen = torch.Generator().manual_seed(0)
    for style in ("stripes", "dots", "strokes", "rings"):
        with torch.no_grad():
            z = testbed.encode(styles.batch(style, [5000])).mean
        shuffled = z.flatten(2)[:, :, torch.randperm(z[0, 0].numel(), generator=gen)].view_as(z)
        assert _latent_loss(testbed, z) < 0.6 * _latent_loss(testbed, shuffled), style


def test_advdm_raises_loss_above_clean_and_noise(testbed):
    import styles
    from advdm.attack.pgd import ProtectConfig, protect
    from advdm.evaluation.measure import fixed_loss, noise_control

    clean = styles.batch(styles.HELD_OUT, [5001])
    protected = protect(testbed, clean, ProtectConfig.preset("fast", steps=10, seed=0))
    assert (protected - clean).abs().max().item() <= 8 / 255 + 1e-6
    loss_clean = fixed_loss(testbed, clean)
    loss_noise = fixed_loss(testbed, noise_control(clean, 8))
    loss_protected = fixed_loss(testbed, protected)
    assert loss_protected > 1.1 * loss_clean
    assert loss_protected > 1.1 * loss_noise


def test_the_verdict_fires_on_advdm_and_not_on_noise(testbed):
    """measure()'s verdict on a trained model: AdvDM protects, same-budget noise passed as
    the protected image does not (bench/verdict.py runs this over five seeds)."""
    import styles
    from advdm.attack.pgd import ProtectConfig, protect
    from advdm.evaluation.measure import measure, noise_control

    clean = styles.batch(styles.HELD_OUT, [5002])
    protected = protect(testbed, clean, ProtectConfig.preset("fast", steps=10, seed=2))
    m = measure(testbed, clean, protected, max_samples=64)
    assert m["protects"] and m["gain_over_noise_low"] > 0.02, m
    decoy = measure(testbed, clean, noise_control(clean, 8, seed=55), max_samples=64)
    assert not decoy["protects"] and decoy["verdict"] == "not distinguishable from same-budget noise", decoy


def test_latent_oracle_raises_the_loss_within_its_latent_budget(testbed, mimicry):
    """bench/mimicry.py's latent AdvDM (the encoder bypassed) against same-size latent noise."""
    with torch.no_grad():
        z = testbed.encode(mimicry.styles.batch("mosaic", range(10000, 10002))).mean
    adv = mimicry.latent_advdm(testbed, z, 0.3, steps=20, seed=0)
    noise = mimicry.latent_noise(z, 0.3, seed=0)
    assert (adv - z).abs().max() <= 0.3 + 1e-6 and (noise - z).abs().max() <= 0.3 + 1e-6

    def loss(latents):  # fixed draws, not the attack's
        return sum(_latent_loss(testbed, x[None], seed=99, samples=32) for x in latents) / len(latents)

    assert loss(adv) > 1.1 * loss(noise)


def test_img2img_check_sees_advdm_and_not_noise(testbed):
    """The paper's img2img threat on a trained model, over 5 seeds: the edit of an AdvDM 8/255
    image lands farther from the clean image's edit than same-budget noise's, with intervals;
    a noise image passed as the protected one gets no protecting verdict."""
    import styles
    from advdm.attack.pgd import ProtectConfig, protect
    from advdm.evaluation.img2img import img2img_check
    from advdm.evaluation.measure import noise_control

    clean = styles.batch(styles.HELD_OUT, [5003])
    protected = protect(testbed, clean, ProtectConfig.preset("fast", steps=10, seed=3))
    m = img2img_check(testbed, clean, protected, seeds=5)
    for row in m["img2img"]:
        assert row["protects"] and row["distance_low"] > row["distance_noise_high"], row
    decoy = img2img_check(testbed, clean, noise_control(clean, 8, seed=56), seeds=5)
    assert not any(row["protects"] for row in decoy["img2img"]), decoy["img2img"]
