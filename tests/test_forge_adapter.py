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


class Engine:
    """Stands in for Forge's ForgeDiffusionEngine subclasses (which import the web UI's
    modules.shared): the attributes the adapter reads; the class name is the family's."""

    is_inpaint = False

    def __init__(self, objects, cond):
        self.forge_objects = objects
        self.forge_objects_original = objects.shallow_copy()
        self.forge_objects_after_applying_lora = objects.shallow_copy()
        self.cond = cond

    @torch.inference_mode()
    def get_learned_conditioning(self, prompt):
        """Forge returns inference tensors: a tensor (SD1/SD2) or a dict (SDXL, SD3, Flux)."""
        pick = torch.tensor([sum(map(ord, p)) % 8 for p in prompt])
        return {k: v[pick] for k, v in self.cond.items()} if isinstance(self.cond, dict) else self.cond[pick]


def forge_engine(backend, family, make_unet, *, scheduler=None, predictor=None, cond, latent_channels=4,
                 seed=0, **vae_config):
    """An engine named `family` over a UNet / transformer from make_unet() and a VAE, built
    with Forge's operations under inference mode as backend/loader.py forge_loader builds them."""
    from backend.diffusion_engine.base import ForgeObjects
    from backend.nn.vae import IntegratedAutoencoderKL
    from backend.operations import using_forge_operations
    from backend.patcher.unet import UnetPatcher
    from backend.patcher.vae import VAE
    from backend.state_dict import load_state_dict

    def vae_model():
        return IntegratedAutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(32, 32), layers_per_block=1, latent_channels=latent_channels, **vae_config)

    torch.manual_seed(seed)
    # seeded weights from plain-torch twins: Forge's operations create weightless layers that
    # get their parameters from the state dict
    weights = make_unet().state_dict(), vae_model().state_dict()
    cpu = torch.device("cpu")
    with torch.inference_mode():  # as forge_loader, which also reads the file there
        weights = [{k: v.clone() for k, v in w.items()} for w in weights]
        cond = {k: v.clone() for k, v in cond.items()} if isinstance(cond, dict) else cond.clone()
        with using_forge_operations(device=cpu, dtype=torch.float32, manual_cast_enabled=False):
            unet = make_unet()
        load_state_dict(unet, weights[0])
        unet.storage_dtype = unet.computation_dtype = torch.float32
        unet.load_device = unet.offload_device = unet.initial_device = cpu
        with using_forge_operations(device=cpu, dtype=torch.float32):
            vae = vae_model()
        load_state_dict(vae, weights[1])
        patcher = UnetPatcher.from_model(model=unet, diffusers_scheduler=scheduler, k_predictor=predictor, config=None)
        objects = ForgeObjects(unet=patcher, clip=None, vae=VAE(model=vae), clipvision=None)
    return type(family, (Engine,), {})(objects, cond)


def tiny_forge_model(backend, prediction_type="epsilon", seed=0):
    """SD1.x-shaped: Forge's UNet (two levels, cross-attention) with a diffusers scheduler."""
    from diffusers import EulerDiscreteScheduler

    from backend.nn.unet import IntegratedUNet2DConditionModel

    def unet():
        return IntegratedUNet2DConditionModel(
            in_channels=4, model_channels=32, out_channels=4, num_res_blocks=[1, 1], channel_mult=[1, 2],
            num_head_channels=16, use_spatial_transformer=True, transformer_depth=[1, 1],
            transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1, context_dim=CONTEXT_DIM)

    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       prediction_type=prediction_type)
    g = torch.Generator().manual_seed(seed + 100)
    return forge_engine(backend, "StableDiffusion", unet, scheduler=scheduler, seed=seed,
                        cond=torch.randn(8, 4, CONTEXT_DIM, generator=g))


def tiny_flux(backend, seed=0):
    """Forge's Flux transformer (one double, one single block) with its PredictionFlux (mu)
    and a 16-channel VAE without quant_conv, shifted and scaled like Flux's."""
    from backend.modules.k_prediction import PredictionFlux
    from backend.nn.flux import IntegratedFluxTransformer2DModel

    def transformer():
        return IntegratedFluxTransformer2DModel(
            in_channels=16, vec_in_dim=8, context_in_dim=CONTEXT_DIM, hidden_size=32, mlp_ratio=2.0, num_heads=2,
            depth=1, depth_single_blocks=1, axes_dim=[4, 6, 6], theta=10000, qkv_bias=True, guidance_embed=True)

    g = torch.Generator().manual_seed(seed + 100)
    cond = {"crossattn": torch.randn(8, 6, CONTEXT_DIM, generator=g), "vector": torch.randn(8, 8, generator=g),
            "guidance": torch.full((8,), 3.5)}
    return forge_engine(backend, "Flux", transformer, predictor=PredictionFlux(), cond=cond, seed=seed,
                        latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                        scaling_factor=0.3611, shift_factor=0.1159)


def tiny_sd3(backend, seed=0):
    """Forge's MMDiTX (depth 1) with SD3's PredictionDiscreteFlow(shift=3)."""
    from backend.modules.k_prediction import PredictionDiscreteFlow
    from backend.nn.mmditx import MMDiTX

    def transformer():
        return MMDiTX(input_size=None, patch_size=2, in_channels=16, depth=1, adm_in_channels=8,
                      context_embedder_config={"target": "torch.nn.Linear",
                                               "params": {"in_features": CONTEXT_DIM, "out_features": 64}},
                      pos_embed_max_size=16, num_patches=256)

    g = torch.Generator().manual_seed(seed + 100)
    cond = {"crossattn": torch.randn(8, 6, CONTEXT_DIM, generator=g), "vector": torch.randn(8, 8, generator=g)}
    return forge_engine(backend, "StableDiffusion3", transformer, predictor=PredictionDiscreteFlow(shift=3.0),
                        cond=cond, seed=seed, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                        scaling_factor=1.5305, shift_factor=0.0609)


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
        ref_d = o.unet.model.apply_model(z, sigma, c_crossattn=cond.expand(2, -1, -1))
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
        o.unet.model.apply_model(torch.randn(1, 4, 4, 4), torch.tensor([1.0]), c_crossattn=torch.randn(1, 4, CONTEXT_DIM))


@pytest.mark.parametrize("method", ["anti-dreambooth", "mist-v2"])
def test_fine_tune_aware_protection_trains_its_lora_on_forges_unet_and_removes_it(sd_model, method):
    """The LoRA surrogate hooks Forge's own layers (ForgeOperations.Linear is an nn.Module, not an
    nn.Linear), trains, and is gone afterwards: weights, requires_grad flags and hooks as before."""
    o = sd_model.forge_objects_after_applying_lora
    assert any(type(m).__name__ == "Linear" and not isinstance(m, torch.nn.Linear)
               for m in o.unet.model.diffusion_model.modules())  # what the adapters must recognise
    before = _snapshot(sd_model)
    x = _image(32, 48)
    out = _protect(sd_model, x, method=method, steps=4, surrogate_every=2, surrogate_steps=1)
    assert out.shape == x.shape and (out != x).any()
    assert ((out - x).abs() * 255).round().max() <= 8
    after = _snapshot(sd_model)
    for (sd_before, flags_before), (sd_after, flags_after) in zip(before, after):
        assert flags_before == flags_after and all(torch.equal(sd_before[k], sd_after[k]) for k in sd_before)
    assert not any(m._forward_hooks for m in o.unet.model.modules())


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
        other = type(cls, (Engine,), {})(sd.forge_objects, sd.cond)
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


@pytest.mark.parametrize("make,family", [(tiny_flux, "Flux"), (tiny_sd3, "SD3")])
def test_flow_families_protect_with_their_schedule(backend, make, family):
    """Flux and SD3 as Forge builds them: flow prediction from the predictor, the shift Forge
    samples with (Flux: e^mu), conditioning {crossattn, vector[, guidance]} -> c_crossattn / y /
    guidance, a 16-channel VAE without quant_conv; the denoiser is KModel.apply_model."""
    import math

    from advdm import diffusion_loss
    from advdm_webui import forge_model as fm

    sd = make(backend)
    predictor = sd.forge_objects_after_applying_lora.unet.model.predictor
    assert fm.family(sd) == family and fm.prediction(sd) == "flow"
    before = _snapshot(sd)
    cond = fm.learned_conditioning(sd, "a painting", 32, 32)
    z = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.3, 0.8])
    conds = {k: v.expand(2, *v.shape[1:]) for k, v in fm.model_conds(cond).items()}
    with torch.inference_mode():
        ref = sd.forge_objects_after_applying_lora.unet.model.apply_model(z, sigma, **conds)
    with fm.attack_mode(sd):
        model = fm.build(sd, cond)
        assert torch.allclose(model.denoise(z, sigma), ref, atol=1e-4)
        loss = diffusion_loss(model, z[:1], sigma, torch.randn_like(z))
    assert torch.isfinite(loss).all()
    assert model.prediction == "flow" and model.latent_channels == 16 and model.pixel_multiple == 16
    expected = math.exp(predictor.mu) if family == "Flux" else 3.0
    assert model.flow_shift == pytest.approx(expected)
    x = _image(32, 32)
    out = _protect(sd, x)
    assert (out != x).any() and ((out - x).abs() * 255).round().max() <= 8
    after = _snapshot(sd)
    assert [f for _, f in after] == [f for _, f in before]
    for (a, _), (b, _) in zip(before, after):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_protect_when_forge_attention_would_chunk_keys(backend, monkeypatch):
    """With little free memory Forge's CPU default (sub-quadratic attention) chunks keys and
    values with torch.exp(out=...), which has no backward; the attack runs PyTorch SDPA instead."""
    from backend import attention, memory_management

    sd = tiny_forge_model(backend, seed=4)
    monkeypatch.setattr(memory_management, "get_free_memory",
                        lambda dev=None, torch_free_too=False: (1024, 1024) if torch_free_too else 1024)
    x = _image(32, 32, seed=3)
    q = torch.randn(1, 16, 32, requires_grad=True)
    with pytest.raises(RuntimeError):  # the host's own attention, differentiated
        attention.attention_sub_quad(q, q, q, heads=2).sum().backward()
    out = _protect(sd, x)
    assert (out != x).any() and ((out - x).abs() * 255).round().max() <= 8


# --- textual inversion through Forge's own CLIP and classic text engine ---------------------------

@pytest.fixture(scope="module")
def web_ui_opts():
    """backend/text_processing/classic_engine.py reads the web UI's opts.emphasis (the only
    thing it imports from the web UI): a stand-in modules.shared while these tests build it."""
    import types

    saved = sys.modules.get("modules.shared")
    sys.modules["modules.shared"] = types.SimpleNamespace(opts=types.SimpleNamespace(emphasis="Original"))
    yield
    if saved is None:
        sys.modules.pop("modules.shared", None)
    else:
        sys.modules["modules.shared"] = saved


def tiny_forge_sd15_with_clip(backend):
    """The SD1.x engine above with Forge's CLIP patcher over an IntegratedCLIP (transformers'
    CLIPTextModel, the test-bed's tokenizer) built under inference mode as Forge loads it, and a
    ClassicTextProcessingEngine; get_learned_conditioning as Forge's sd15.py has it."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from backend import memory_management
    from backend.nn.clip import IntegratedCLIP
    from backend.patcher.clip import CLIP
    from backend.text_processing.classic_engine import ClassicTextProcessingEngine
    from test_textual_inversion import TESTBED

    tokenizer = CLIPTokenizer.from_pretrained(TESTBED / "tokenizer")
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=CONTEXT_DIM, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    torch.manual_seed(3)
    weights = IntegratedCLIP(CLIPTextModel, config).state_dict()
    with torch.inference_mode():
        encoder = IntegratedCLIP(CLIPTextModel, config)
        encoder.load_state_dict(weights)
        clip = CLIP(model_dict={"clip_l": encoder}, tokenizer_dict={"clip_l": tokenizer})

    class StableDiffusion(type(tiny_forge_model(backend))):
        @torch.inference_mode()
        def get_learned_conditioning(self, prompt):
            memory_management.load_model_gpu(self.forge_objects.clip.patcher)
            return self.text_processing_engine(prompt)

    sd = tiny_forge_model(backend)
    sd.__class__ = StableDiffusion
    for objects in (sd.forge_objects, sd.forge_objects_original, sd.forge_objects_after_applying_lora):
        objects.clip = clip
    sd.text_processing_engine = ClassicTextProcessingEngine(
        text_encoder=clip.cond_stage_model.clip_l, tokenizer=tokenizer, embedding_key="clip_l",
        embedding_expected_shape=CONTEXT_DIM, emphasis_name="Original", clip_skip=1, final_layer_norm=True)
    return sd


def _clip_snapshot(sd):
    clip = sd.forge_objects_after_applying_lora.clip.cond_stage_model
    return ({k: v.detach().clone() for k, v in clip.state_dict().items()},
            {n: p.requires_grad for n, p in clip.named_parameters()},
            [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in clip.modules()])


def test_text_route_learns_through_forges_own_text_engine_and_leaves_everything_as_it_was(backend, web_ui_opts):
    from advdm.evaluation.mimicry import MimicryConfig, mimicry_check
    from advdm.mimic.finetune import FinetuneConfig
    from advdm_webui import forge_model as fm

    sd = tiny_forge_sd15_with_clip(backend)
    engine = sd.text_processing_engine
    table = engine.text_encoder.transformer.text_model.embeddings.token_embedding.wrapped
    assert type(table) is torch.nn.Embedding  # under Forge's CLIPEmbeddingForTextualInversion
    vocabulary = dict(engine.tokenizer.get_vocab())
    before, clip_before = _snapshot(sd), _clip_snapshot(sd)
    objects = sd.forge_objects
    config = MimicryConfig(seeds=1, draws=4, finetune=FinetuneConfig(steps=2, batch=1), pictures=1, picture_steps=2,
                           picture_size=32, mimic="textual-inversion", ti_prompt="a painting in style sks", ti_lr=0.05)
    x = [_image(32, 32, seed=s) for s in range(3)]
    seen = []
    with fm.loaded_model(sd, "a painting", 32, 32, text=True) as model:
        assert list(model.text.embeddings) == [table] and list(model.text.encoders) == [engine.text_encoder]
        assert model.text.token_ids("sks") == [engine.tokenize(["sks"])[0][0]]
        wrapper = engine.text_encoder.transformer.text_model.embeddings.token_embedding  # its output: after the word's
        wrapper.register_forward_hook(lambda m, a, out: seen.append(out.requires_grad))
        r = mimicry_check(model, x[:2], x[2:], x[:2], config)
    assert True in seen  # the learned word's lookups were part of the graph: gradients reached the table's output
    assert r["mimic"] == "textual-inversion" and r["picture_rmse_protected"] == 0
    wrapper._forward_hooks.clear()  # this test's own hook
    assert sd.forge_objects is objects
    for (w0, f0), (w1, f1) in zip(before, _snapshot(sd)):
        assert f0 == f1 and all(torch.equal(w0[k], w1[k]) for k in w0)
    w0, f0, h0 = clip_before
    w1, f1, h1 = _clip_snapshot(sd)
    assert f0 == f1 and h0 == h1 and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert engine.tokenizer.get_vocab() == vocabulary


def test_textual_inversion_is_refused_by_name_on_forges_t5_families(backend):
    from advdm_webui import forge_model as fm

    for make, name in ((tiny_sd3, "SD3"), (tiny_flux, "Flux")):
        with pytest.raises(ValueError, match=f"textual inversion on Forge {name} models is not supported"):
            fm.text_models(make(backend))
