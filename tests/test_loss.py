"""The sigma-form loss against each family's training loss written the textbook way,
with diffusers' own schedulers and the raw networks."""
import pytest
import torch
from diffusers import DDPMScheduler

from advdm import advdm_loss
from advdm.models import builtin
from advdm.models.draws import flow_sigma
from sample_images import smooth_image


def _latent(vae, image, scale, shift=0.0):
    return (vae.encode(image * 2 - 1).latent_dist.mean - shift) * scale


@pytest.mark.parametrize("name,prediction_type", [("tiny", "epsilon"), ("tiny-sd2v", "v_prediction"), ("tiny-sdxl", "epsilon")])
def test_unet_loss_matches_textbook(name, prediction_type):
    unet, vae, cond = builtin.tiny_parts(name)
    model = builtin.build(name)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type)
    image = smooth_image(32, 24)
    t = torch.tensor([0, 17, 500, 999])
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(4, 4, 4, 3, generator=g)
    with torch.no_grad():
        z = _latent(vae, image, builtin.TINY_SCALE[4]).expand(4, -1, -1, -1)
        noisy = scheduler.add_noise(z, noise, t)
        added = None
        if cond.pooled is not None:
            added = {"text_embeds": cond.pooled.expand(4, -1), "time_ids": torch.tensor([[32.0, 24, 0, 0, 32, 24]] * 4)}
        out = unet(noisy, t, encoder_hidden_states=cond.context.expand(4, -1, -1), added_cond_kwargs=added).sample
        target = noise if prediction_type == "epsilon" else scheduler.get_velocity(z, noise, t)
        textbook = (out - target).pow(2).mean()
        ours = advdm_loss(model, image, t, noise)
    assert ours.item() == pytest.approx(textbook.item(), rel=1e-4)


def _flow_case(name, seed):
    """(net, cond, model, image, t, sigma, noise, clean latent z) for a flow textbook check."""
    net, vae, cond = builtin.tiny_parts(name)
    image = smooth_image(32, 32)
    t = torch.tensor([0.1, 0.5, 0.9])
    noise = torch.randn(3, 16, 4, 4, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        z = _latent(vae, image, builtin.TINY_SCALE[16]).expand(3, -1, -1, -1)
    return net, cond, builtin.build(name), image, t, flow_sigma(t, 3.0), noise, z


def test_flow_loss_matches_textbook_sd3():
    net, cond, model, image, t, sigma, noise, z = _flow_case("tiny-sd3", 4)
    with torch.no_grad():
        s = sigma.view(-1, 1, 1, 1)
        x = (1 - s) * z + s * noise
        v = net(x, timestep=sigma * 1000, encoder_hidden_states=cond.context.expand(3, -1, -1),
                pooled_projections=cond.pooled.expand(3, -1)).sample
        textbook = (v - (noise - z)).pow(2).mean()
        ours = advdm_loss(model, image, t, noise)
    assert ours.item() == pytest.approx(textbook.item(), rel=1e-4)


def test_flow_loss_matches_textbook_flux():
    """Flux's velocity loss on latents packed into 2x2 patches by diffusers' own pipeline helpers."""
    from diffusers import FluxPipeline

    net, cond, model, image, t, sigma, noise, z = _flow_case("tiny-flux", 5)
    with torch.no_grad():
        s = sigma.view(-1, 1, 1, 1)
        x = FluxPipeline._pack_latents((1 - s) * z + s * noise, 3, 16, 4, 4)
        v = net(x, timestep=sigma, guidance=torch.full((3,), 3.5), pooled_projections=cond.pooled.expand(3, -1),
                encoder_hidden_states=cond.context.expand(3, -1, -1), txt_ids=torch.zeros(cond.context.shape[1], 3),
                img_ids=FluxPipeline._prepare_latent_image_ids(3, 2, 2, "cpu", torch.float32)).sample
        target = FluxPipeline._pack_latents(noise - z, 3, 16, 4, 4)
        textbook = (v - target).pow(2).mean()
        ours = advdm_loss(model, image, t, noise)
    assert ours.item() == pytest.approx(textbook.item(), rel=1e-4)


def test_encoder_noise_gives_the_reparameterised_sample():
    model = builtin.build("tiny")
    image = smooth_image()
    t, noise = torch.tensor([300]), torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        mean_loss = advdm_loss(model, image, t, noise)
        zero = advdm_loss(model, image, t, noise, encoder_noise=torch.zeros(1, 4, 8, 8))
        sampled = advdm_loss(model, image, t, noise, encoder_noise=torch.randn(1, 4, 8, 8) * 1e3)
    assert zero == mean_loss and sampled != mean_loss


@pytest.mark.parametrize("name", ["tiny-sd2v", "tiny-sdxl", "tiny-sd3", "tiny-flux"])
def test_every_family_gets_gradients_and_a_rising_loss(name):
    from advdm import ProtectConfig, protect
    from advdm.evaluation.measure import fixed_loss

    model = builtin.build(name)
    image = smooth_image()
    protected = protect(model, image, ProtectConfig(epsilon=8, steps=30))
    assert (protected != image).any()
    assert fixed_loss(model, protected, samples=16, seed=99) > fixed_loss(model, image, samples=16, seed=99)
