"""The Forge adapter (advdm_webui/forge_model.py) against Forge 2.x's real backend classes: a
tiny IntegratedUNet2DConditionModel, IntegratedAutoencoderKL and KModel (with Forge's own
UnetPatcher, VAE patcher, predictor and LoRA merger), built under inference mode as Forge's
loader builds them, with seeded random weights.

Runs when FORGE_DIR points at a Forge checkout (main dfdcbab6, with repositories/huggingface_guess)
and this interpreter has Forge's packages, e.g. a Python 3.10 venv that sees Forge's venv:

    FORGE_DIR=/path/to/forge venv-with-forge-packages/bin/python -m pytest -q tests/test_forge_adapter.py

Skipped otherwise. Forge parses sys.argv at import: --always-cpu is put there first.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

FORGE_DIR = os.environ.get("FORGE_DIR")
pytestmark = pytest.mark.skipif(not FORGE_DIR, reason="FORGE_DIR not set (path to a Forge 2.x checkout)")

CONTEXT_DIM = 32


@pytest.fixture(scope="module")
def backend():
    for p in (FORGE_DIR, os.path.join(FORGE_DIR, "packages_3rdparty"),
              os.path.join(FORGE_DIR, "repositories", "huggingface_guess")):
        if p not in sys.path:
            sys.path.append(p)
    argv = sys.argv[:]
    sys.argv[:] = [argv[0], "--always-cpu"]
    try:
        import backend.attention  # noqa: F401
        import backend.patcher.unet  # noqa: F401
        import backend.patcher.vae  # noqa: F401
    except ImportError as e:
        pytest.skip(f"Forge's backend does not import here: {e}")
    finally:
        sys.argv[:] = argv
    import backend

    return backend


class StableDiffusion:
    """Stands in for backend.diffusion_engine.sd15.StableDiffusion (which imports the web UI's
    modules.shared): the same class name and the attributes the adapter reads."""

    is_inpaint = False

    def __init__(self, objects, table):
        self.forge_objects = objects
        self.forge_objects_original = objects.shallow_copy()
        self.forge_objects_after_applying_lora = objects.shallow_copy()
        self.table = table

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt):
        return self.table[[sum(map(ord, p)) % 8 for p in prompt]][:, None].repeat(1, 4, 1)


def tiny_forge_model(backend, prediction_type="epsilon", seed=0):
    from diffusers import EulerDiscreteScheduler

    from backend.diffusion_engine.base import ForgeObjects
    from backend.nn.unet import IntegratedUNet2DConditionModel
    from backend.nn.vae import IntegratedAutoencoderKL
    from backend.operations import using_forge_operations
    from backend.patcher.unet import UnetPatcher
    from backend.patcher.vae import VAE

    from backend.state_dict import load_state_dict

    def unet_model():
        return IntegratedUNet2DConditionModel(
            in_channels=4, model_channels=32, out_channels=4, num_res_blocks=[1, 1], channel_mult=[1, 2],
            num_head_channels=16, use_spatial_transformer=True, transformer_depth=[1, 1],
            transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1, context_dim=CONTEXT_DIM)

    def vae_model():
        return IntegratedAutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(32, 32), layers_per_block=1, latent_channels=4)

    torch.manual_seed(seed)
    # seeded weights from plain-torch twins: Forge's operations create weightless layers that
    # get their parameters from the state dict, as in forge_loader
    weights = unet_model().state_dict(), vae_model().state_dict()
    cpu = torch.device("cpu")
    with torch.inference_mode():  # as backend/loader.py forge_loader, which also reads the file there
        weights = [{k: v.clone() for k, v in w.items()} for w in weights]
        with using_forge_operations(device=cpu, dtype=torch.float32, manual_cast_enabled=False):
            unet = unet_model()
        load_state_dict(unet, weights[0])
        unet.storage_dtype = unet.computation_dtype = torch.float32
        unet.load_device = unet.offload_device = unet.initial_device = cpu
        with using_forge_operations(device=cpu, dtype=torch.float32):
            vae_model_ = vae_model()
        load_state_dict(vae_model_, weights[1])
        scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           prediction_type=prediction_type)
        patcher = UnetPatcher.from_model(model=unet, diffusers_scheduler=scheduler, config=None)
        vae = VAE(model=vae_model_)
        table = torch.randn(8, CONTEXT_DIM)
    return StableDiffusion(ForgeObjects(unet=patcher, clip=None, vae=vae, clipvision=None), table)


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def sd_model(backend, request):
    return tiny_forge_model(backend, request.param)


def _image(h=32, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 5, 5, generator=g), size=(h, w), mode="bilinear")
    return (x * 255).round() / 255


def _modules(sd):
    o = sd.forge_objects_after_applying_lora
    return [o.unet.model, o.vae.first_stage_model]


def _snapshot(sd):
    return [({k: v.detach().clone() for k, v in m.state_dict().items()},
             {n: p.requires_grad for n, p in m.named_parameters()}) for m in _modules(sd)]


def _protect(sd, x, **cfg):
    import advdm
    from advdm_webui import forge_model as fm

    fm.load(sd)
    with fm.attack_mode(sd):
        model = fm.build(sd, fm.learned_conditioning(sd, "a painting", x.shape[-1], x.shape[-2]))
        return advdm.protect(model, x, advdm.ProtectConfig(**{"steps": 2, "epsilon": 8, **cfg}))


def test_forge_model_fails_backward_as_loaded(sd_model):
    """What the adapter is for: Forge's weights are inference tensors, so a backward through the
    model as Forge loaded it fails."""
    assert all(p.is_inference() for m in _modules(sd_model) for p in m.parameters())
    fsm = sd_model.forge_objects_after_applying_lora.vae.first_stage_model
    x = _image().requires_grad_(True)
    with pytest.raises(RuntimeError, match="[Ii]nference tensors"):
        fsm.encoder(x * 2 - 1).sum().backward()


def test_family_prediction_and_schedule(sd_model):
    from advdm_webui import forge_model as fm

    expected = {"epsilon": "eps", "v_prediction": "v"}
    kind = sd_model.forge_objects_after_applying_lora.unet.model.predictor.prediction_type
    assert fm.family(sd_model) == "SD1.x" and fm.prediction(sd_model) == expected[kind]
    with fm.attack_mode(sd_model):
        model = fm.build(sd_model, fm.learned_conditioning(sd_model, "x", 32, 32))
    assert model.sigmas.shape == (1000,) and model.sigmas[0] < model.sigmas[-1]
    assert model.pixel_multiple == 8 * 2  # one UNet downsampling
    assert model.latent_channels == 4 and model.decode is not None


def test_denoise_and_encode_match_forge(sd_model):
    """denoise is KModel.apply_model (sigma in, denoised latent out); encode's mean is Forge's
    posterior mean through process_in; decode is Forge's VAE decode."""
    from advdm_webui import forge_model as fm

    o = sd_model.forge_objects_after_applying_lora
    x = _image()
    cond = fm.learned_conditioning(sd_model, "a painting", 48, 32)
    assert not cond.is_inference()
    z = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.5, 3.0])
    with torch.inference_mode():
        ref_d = o.unet.model.apply_model(z, sigma, c_crossattn=cond.repeat(2, 1, 1))
        fsm = o.vae.first_stage_model
        ref_mean = fsm.process_in(fsm.encode(x * 2 - 1, regulation=lambda p: p.mode()))
        ref_pixels = o.vae.decode(fsm.process_out(z[:1])).movedim(-1, 1)
    with fm.attack_mode(sd_model):
        model = fm.build(sd_model, cond)
        d = model.denoise(z, sigma)
        mean = model.encode(x).mean
        pixels = model.decode(z[:1])
    assert torch.allclose(d, ref_d, atol=1e-4)
    assert torch.allclose(mean, ref_mean, atol=1e-5)
    assert torch.allclose(pixels, ref_pixels, atol=1e-5) and pixels.dtype == torch.float32


def test_protect_budget_and_model_left_as_it_was(sd_model):
    from backend import attention, stream
    from backend.nn import unet as forge_unet
    from backend.nn import vae as forge_vae

    globals_before = (forge_unet.attention_function, forge_vae.attention_function_single_head_spatial,
                      attention.attention_function, stream.stream_activated)
    assert forge_unet.attention_function is attention.attention_sub_quad  # Forge's CPU default
    before = _snapshot(sd_model)
    x = _image(40, 56)
    out = _protect(sd_model, x)
    assert out.shape == x.shape and (out != x).any()
    assert ((out - x).abs() * 255).round().max() <= 8
    assert _snapshot(sd_model)[0][1] == before[0][1] and _snapshot(sd_model)[1][1] == before[1][1]
    for (sd_before, _), (sd_after, _) in zip(before, _snapshot(sd_model)):
        assert all(torch.equal(sd_before[k], sd_after[k]) for k in sd_before)
    assert (forge_unet.attention_function, forge_vae.attention_function_single_head_spatial,
            attention.attention_function, stream.stream_activated) == globals_before
    assert not torch.is_inference_mode_enabled()
    with torch.inference_mode():  # Forge samples with the model afterwards
        o = sd_model.forge_objects_after_applying_lora
        o.unet.model.apply_model(torch.randn(1, 4, 4, 4), torch.tensor([1.0]), c_crossattn=torch.randn(1, 4, 32))


def test_protect_after_a_lora_merge_makes_weights_inference_tensors_again(backend):
    """Forge's LoRA merge (patcher/lora.py, under inference mode) replaces the merged
    parameters with new inference tensors; the protection after it uses the merged weights."""
    sd = tiny_forge_model(backend, seed=3)
    x = _image(32, 32, seed=2)
    plain = _protect(sd, x)
    unet = sd.forge_objects_after_applying_lora.unet
    key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"
    weight = unet.model.get_parameter(key)
    diff = torch.randn(weight.shape, generator=torch.Generator().manual_seed(5))
    lora = unet.clone()
    assert lora.add_patches(filename="random.safetensors", patches={key: (diff,)}, strength_patch=1.0)
    sd.forge_objects_after_applying_lora = sd.forge_objects.shallow_copy()
    sd.forge_objects_after_applying_lora.unet = lora
    from advdm_webui import forge_model as fm

    fm.load(sd)  # loads the LoRA patcher, as a generation does: Forge merges under inference mode
    merged_weight = unet.model.get_parameter(key)
    assert merged_weight.is_inference() and torch.allclose(merged_weight, weight + diff)
    merged = _protect(sd, x)
    assert not torch.equal(merged, plain)  # the merged weights were used


def _refused(sd):
    from advdm_webui import forge_model as fm

    with pytest.raises(fm.UnsupportedModel) as e:
        fm.prediction(sd)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_refusals_name_their_reason(backend):
    sd = tiny_forge_model(backend)
    for cls, word in (("StableDiffusionXLRefiner", "refiner"), ("Chroma", "Chroma")):
        other = type(cls, (), {})()
        other.__dict__.update(sd.__dict__)
        assert word in _refused(other)
    sd.is_inpaint = True
    assert "inpainting" in _refused(sd)
    sd.is_inpaint = False
    predictor = sd.forge_objects_after_applying_lora.unet.model.predictor
    predictor.prediction_type = "edm"
    assert "edm" in _refused(sd)
    predictor.prediction_type = "epsilon"
    unet = sd.forge_objects_after_applying_lora.unet
    unet.lora_patches = {("x.safetensors", 1.0, 1.0, True): {}}
    assert "online" in _refused(sd)
