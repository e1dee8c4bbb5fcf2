"""The A1111 / Forge adapter (advdm_webui) against the real ldm LatentDiffusion class,
built from a tiny explicit config with seeded random weights (no download).

Skipped when `ldm` is not importable. It comes from PyPI:
    pip install --no-deps stable-diffusion-sdkit==2.1.5
    pip install "pytorch_lightning<2" omegaconf einops "setuptools<81" pillow
ldm imports torchvision.utils.make_grid at module level; where torchvision is missing (or
does not import beside this torch) a stand-in module is used: nothing here calls it.
"""
from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ldm") is None, reason="ldm (stable-diffusion-sdkit) not installed")

CONTEXT_DIM = 32


def _import_ldm():
    try:
        import diffusers  # noqa: F401  (before any torchvision stand-in: both probe torchvision)
        import pytorch_lightning  # noqa: F401
    except Exception as e:  # pragma: no cover
        pytest.skip(f"pytorch_lightning does not import: {e}")
    try:
        import torchvision.utils  # noqa: F401
    except Exception:
        tv = types.ModuleType("torchvision")
        tvu = types.ModuleType("torchvision.utils")
        tvu.make_grid = lambda *a, **k: None
        tv.utils = tvu
        sys.modules.setdefault("torchvision", tv)
        sys.modules.setdefault("torchvision.utils", tvu)
    from ldm.models.diffusion.ddpm import LatentDiffusion

    return LatentDiffusion


class TinyEmbedder(torch.nn.Module):
    """Prompt -> a fixed (1, 4, CONTEXT_DIM) context, deterministic per prompt."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(8, CONTEXT_DIM, generator=torch.Generator().manual_seed(7)))

    def encode(self, prompts):
        rows = [self.table[[sum(map(ord, p)) % 8, (len(p) + 1) % 8, 3, 5]] for p in prompts]
        return torch.stack(rows)


def tiny_ldm(parameterization="eps", seed=0, use_checkpoint=False):
    LatentDiffusion = _import_ldm()
    torch.manual_seed(seed)
    unet = {
        "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
        "params": dict(image_size=8, in_channels=4, out_channels=4, model_channels=32,
                       attention_resolutions=[2], num_res_blocks=1, channel_mult=[1, 2],
                       num_head_channels=16, use_spatial_transformer=True, transformer_depth=1,
                       context_dim=CONTEXT_DIM, use_checkpoint=use_checkpoint, legacy=False,
                       use_linear_in_transformer=parameterization == "v"),
    }
    vae = {
        "target": "ldm.models.autoencoder.AutoencoderKL",
        "params": dict(embed_dim=4, lossconfig={"target": "torch.nn.Identity"},
                       ddconfig=dict(double_z=True, z_channels=4, resolution=64, in_channels=3, out_ch=3,
                                     ch=32, ch_mult=[1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[],
                                     dropout=0.0)),
    }
    model = LatentDiffusion(
        first_stage_config=vae, cond_stage_config={"target": "torch.nn.Identity"}, unet_config=unet,
        linear_start=0.00085, linear_end=0.012, num_timesteps_cond=1, timesteps=1000,
        first_stage_key="jpg", cond_stage_key="txt", image_size=8, channels=4,
        cond_stage_trainable=False, conditioning_key="crossattn", scale_factor=0.18215,
        use_ema=False, parameterization=parameterization,
    )
    model.cond_stage_model = TinyEmbedder()
    return model.eval()


@pytest.fixture(scope="module", params=["eps", "v"])
def ldm_model(request):
    return tiny_ldm(request.param)


def _image(h=32, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 5, 5, generator=g), size=(h, w), mode="bilinear")
    return (x * 255).round() / 255


def _snapshot(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}, {n: p.requires_grad for n, p in m.named_parameters()}


def _build(m, prompt="a painting", h=32, w=48):
    from advdm_webui import ldm_model

    cond = ldm_model.learned_conditioning(m, prompt, w, h)
    return ldm_model.build(m, cond)


def test_family_and_prediction(ldm_model):
    from advdm_webui import ldm_model as lm

    assert lm.family(ldm_model) == "SD1.x"
    assert lm.prediction(ldm_model) == ldm_model.parameterization


def test_sigma_to_t_is_exact_on_the_schedule(ldm_model):
    from advdm import sigmas_from_alphas_cumprod
    from advdm_webui.ldm_model import sigma_to_t

    sigmas = sigmas_from_alphas_cumprod(ldm_model.alphas_cumprod)
    idx = torch.tensor([0, 1, 17, 500, 998, 999])
    assert torch.allclose(sigma_to_t(sigmas[idx], sigmas), idx.float(), atol=1e-3)


def test_denoise_matches_ldm_training_loss(ldm_model):
    """w(sigma) * ||D - z||^2 through the adapter equals ldm's own p_losses target MSE."""
    from advdm.models.interface import diffusion_loss

    m = ldm_model
    model = _build(m)
    x = _image()
    with torch.no_grad():
        lat = model.encode(x)
        z = lat.mean
        t = torch.tensor([10, 400, 900])
        noise = torch.randn(3, *z.shape[1:], generator=torch.Generator().manual_seed(1))
        ours = diffusion_loss(model, z, model.sigmas[t], noise)
        # ldm's own definition (LatentDiffusion.p_losses without the logvar weighting)
        zs = z.expand(3, -1, -1, -1)
        x_noisy = m.q_sample(x_start=zs, t=t, noise=noise)
        cond = m.get_learned_conditioning(["a painting"]).expand(3, -1, -1)
        out = m.apply_model(x_noisy, t, cond)
        target = noise if m.parameterization == "eps" else m.get_v(zs, noise, t)
        theirs = (out - target).pow(2).flatten(1).mean(1)
    assert torch.allclose(ours, theirs, rtol=1e-3, atol=1e-6), (ours, theirs)


def test_encode_matches_ldm_posterior(ldm_model):
    m = ldm_model
    model = _build(m)
    x = _image()
    with torch.no_grad():
        lat = model.encode(x)
        post = m.first_stage_model.encode(x * 2 - 1)
    assert torch.allclose(lat.mean, post.mean * m.scale_factor, atol=1e-5)
    assert torch.allclose(lat.std, post.std * m.scale_factor, atol=1e-5)


def test_protect_budget_and_model_left_as_it_was(ldm_model):
    import advdm
    from advdm_webui import ldm_model as lm

    m = ldm_model
    for p in m.model.parameters():  # as in the web UI: UNet parameters keep requires_grad=True
        p.requires_grad_(True)
    before, flags = _snapshot(m)
    x = _image(40, 56)  # not a multiple of 8 on one side after padding checks
    with lm.attack_mode(m):
        assert not any(p.requires_grad for p in m.parameters())
        model = _build(m, h=40, w=56)
        steps = []
        out = advdm.protect(model, x, advdm.ProtectConfig(steps=3, epsilon=8),
                            progress=lambda s, n, cur: steps.append((s, n)))
        for p in m.parameters():
            assert p.grad is None
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert out.shape == x.shape
    k = out * 255
    assert torch.allclose(k, k.round(), atol=1e-4)
    assert (k.round() - (x * 255).round()).abs().max() <= 8
    assert (out != x).any()
    after, flags_after = _snapshot(m)
    assert flags_after == flags
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_protect_with_gradient_checkpointing_blocks():
    """ldm blocks built with use_checkpoint=True (the CompVis transformer blocks always
    checkpoint) recompute in backward and ask for their frozen parameters' gradients; the
    attack switches checkpointing off and back on."""
    import advdm
    from advdm_webui import ldm_model as lm

    m = tiny_ldm(use_checkpoint=True)
    switches = lm._checkpoint_flags(m)
    assert len(switches) >= 3  # ResBlocks' use_checkpoint and the transformer block's checkpoint
    before, flags = _snapshot(m)
    x = _image(32, 32)
    with lm.attack_mode(m):
        out = advdm.protect(_build(m, h=32, w=32), x, advdm.ProtectConfig(steps=2, epsilon=8))
    assert (out != x).any() and ((out - x).abs() * 255).max() <= 8 + 1e-3
    assert all(getattr(mod, attr) is True for mod, attr in switches)
    after, flags_after = _snapshot(m)
    assert flags_after == flags and all(torch.equal(before[k], after[k]) for k in before)


def test_progress_can_cancel(ldm_model):
    import advdm
    from advdm_webui import ldm_model as lm

    class Stop(Exception):
        pass

    def progress(step, total, current):
        if step == 2:
            raise Stop

    m = ldm_model
    _, flags = _snapshot(m)
    with pytest.raises(Stop):
        with lm.attack_mode(m):
            advdm.protect(_build(m), _image(), advdm.ProtectConfig(steps=10), progress=progress)
    assert _snapshot(m)[1] == flags


def test_fp16_vae_runs_fp32_for_the_attack_and_is_restored():
    import advdm
    from advdm_webui import ldm_model as lm

    m = tiny_ldm("eps", seed=3)
    m.first_stage_model.half()
    before = {k: v.clone() for k, v in m.first_stage_model.state_dict().items()}
    with lm.attack_mode(m):
        assert next(m.first_stage_model.parameters()).dtype == torch.float32
        out = advdm.protect(_build(m), _image(), advdm.ProtectConfig(steps=2))
    assert next(m.first_stage_model.parameters()).dtype == torch.float16
    after = m.first_stage_model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before)
    assert out.dtype == torch.float32


def test_recompute_encode_gives_the_same_gradient(ldm_model):
    """--medvram path: the encoder is run again in backward; same gradient as without."""
    from advdm.models.interface import diffusion_loss
    from advdm_webui import ldm_model as lm

    m = ldm_model
    cond = lm.learned_conditioning(m, "a painting", 48, 32)
    calls = []
    grads = []
    with lm.attack_mode(m):
        for recompute in (False, True):
            model = lm.build(m, cond, recompute_encode=recompute, before_encode=lambda: calls.append(1))
            x = _image().requires_grad_(True)
            lat = model.encode(x)
            noise = torch.randn(2, *lat.mean.shape[1:], generator=torch.Generator().manual_seed(2))
            z = lat.sample(torch.randn(lat.mean.shape, generator=torch.Generator().manual_seed(3)))
            loss = diffusion_loss(model, z, model.sigmas[torch.tensor([100, 700])], noise).sum()
            grads.append(torch.autograd.grad(loss, x)[0])
    assert len(calls) == 3  # once without, forward + recompute with
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_measure_runs(ldm_model):
    import advdm
    from advdm_webui import ldm_model as lm

    m = ldm_model
    x = _image()
    with lm.attack_mode(m):
        model = _build(m)
        out = advdm.protect(model, x, advdm.ProtectConfig(steps=2))
        d = advdm.measure(model, x, out, samples=2, max_samples=2)
    assert d["linf"] <= 16 + 1e-4
    assert "diffusion loss" in advdm.format_measurement(d)


def test_decode_matches_ldms_own_decode_first_stage(ldm_model):
    """The purification rows decode through the adapter: the same pixels as ldm's own path."""
    from advdm_webui import ldm_model as lm

    x = _image()
    with lm.attack_mode(ldm_model):
        model = _build(ldm_model)
        z = model.encode(x).mean
        ours = model.decode(z)
    with torch.no_grad():
        theirs = ((ldm_model.decode_first_stage(z).float() + 1) / 2).clamp(0, 1)
    assert ours.shape == x.shape and torch.allclose(ours, theirs, atol=1e-5)


def test_refuses_x0_models():
    from advdm_webui import ldm_model as lm

    m = types.SimpleNamespace(parameterization="x0", first_stage_model=object(), apply_model=None, alphas_cumprod=torch.ones(3))
    with pytest.raises(lm.UnsupportedModel, match="x0"):
        lm.prediction(m)


class _FlowSampling(torch.nn.Module):
    """modules/models/sd3/sd3_impls.ModelSamplingDiscreteFlow, as far as the adapter uses it."""

    shift = 3.0

    def timestep(self, sigma):
        return sigma * 1000

    def calculate_denoised(self, sigma, model_output, model_input):
        return model_input - model_output * sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))


class _TinyMMDiT(torch.nn.Module):
    patch_size = 2

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.ctx = torch.nn.Linear(8, 16)
        self.vec = torch.nn.Linear(4, 16)
        self.t = torch.nn.Linear(1, 16)

    def forward(self, x, t, context, y):
        h = self.conv(x) + (self.ctx(context).mean(1) + self.vec(y) + self.t(t[:, None] / 1000))[:, :, None, None]
        return torch.tanh(h)


class _SD3Base(torch.nn.Module):
    """sd3_impls.BaseModel: takes sigma, returns the denoised latent."""

    def __init__(self):
        super().__init__()
        self.diffusion_model = _TinyMMDiT()
        self.model_sampling = _FlowSampling()

    def forward(self, x, sigma, c_crossattn=None, y=None):
        out = self.diffusion_model(x, self.model_sampling.timestep(sigma).float(), c_crossattn, y).float()
        return self.model_sampling.calculate_denoised(sigma, out, x)


class _SD3VAE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 8, stride=8))  # 16 channels x (mean, logvar)


class _SD3Like(torch.nn.Module):
    """What A1111 v1.10 puts in shared.sd_model for an SD3 checkpoint (sd3_model.SD3Inferencer
    after sd_models.set_model_type): it claims eps and has an alphas_cumprod; is_sd3 tells."""

    is_sd3, is_sdxl, is_sd2, is_sd1 = True, False, False, False

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.model = _SD3Base()
        self.first_stage_model = _SD3VAE()
        self.alphas_cumprod = 1 / (torch.linspace(0.001, 1, 1000) ** 2 + 1)
        self.parameterization = "eps"
        self.latent_channels = 16
        self.latent_format = types.SimpleNamespace(scale_factor=1.5305, shift_factor=0.0609)
        self.table = torch.nn.Parameter(torch.randn(3, 8))

    def get_learned_conditioning(self, batch):
        n = len(batch)
        return {"crossattn": self.table[None].expand(n, -1, -1) * len(batch[0]),
                "vector": self.table[:, :4].mean(0)[None].expand(n, -1)}

    def apply_model(self, x, t, cond):
        return self.model(x, t, c_crossattn=cond["crossattn"], y=cond["vector"])


def test_sd3_family_and_flow_settings():
    from advdm_webui import ldm_model as lm

    m = _SD3Like()
    assert lm.family(m) == "SD3" and lm.prediction(m) == "flow"
    model = _build(m)
    assert model.prediction == "flow" and model.sigmas is None
    assert model.flow_shift == 3.0 and model.flow_logit_normal
    assert model.pixel_multiple == 16 and model.latent_channels == 16 and model.train_resolution == 1024
    assert "SD3" in model.name


def test_sd3_loss_is_the_rectified_flow_training_loss():
    """w(sigma) ||D - z||^2 through the adapter equals ||v_hat - (n - z)||^2 on x_t = (1-s) z + s n."""
    from advdm.models.interface import diffusion_loss

    m = _SD3Like()
    model = _build(m)
    x = _image(32, 48)
    with torch.no_grad():
        z = model.encode(x).mean
        assert z.shape == (1, 16, 4, 6)
        sigma = torch.tensor([0.1, 0.5, 0.9])
        noise = torch.randn(3, *z.shape[1:], generator=torch.Generator().manual_seed(1))
        ours = diffusion_loss(model, z, sigma, noise)
        zs = z.expand(3, -1, -1, -1)
        xt = (1 - sigma.view(-1, 1, 1, 1)) * zs + sigma.view(-1, 1, 1, 1) * noise
        cond = m.get_learned_conditioning(["a painting"])
        v = m.model.diffusion_model(xt, sigma * 1000, cond["crossattn"].expand(3, -1, -1), cond["vector"].expand(3, -1))
        theirs = (v - (noise - zs)).pow(2).flatten(1).mean(1)
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6), (ours, theirs)


def test_sd3_encode_uses_the_latent_format():
    from advdm_webui import ldm_model as lm

    m = _SD3Like()
    x = _image(32, 48)
    with torch.no_grad():
        lat = _build(m).encode(x)
        mean, logvar = m.first_stage_model.encoder(x * 2 - 1).chunk(2, dim=1)
    assert torch.allclose(lat.mean, (mean - 0.0609) * 1.5305, atol=1e-6)
    assert torch.allclose(lat.std, torch.exp(0.5 * logvar.clamp(-30, 20)) * 1.5305, atol=1e-6)
    assert lm.posterior(m.first_stage_model, x)[0].shape[1] == 16  # no quant_conv


def test_sd3_protect_budget_and_model_left_as_it_was():
    import advdm
    from advdm_webui import ldm_model as lm

    m = _SD3Like(seed=2)
    for p in m.parameters():
        p.requires_grad_(True)
    before, flags = _snapshot(m)
    x = _image(40, 56)  # neither side a multiple of 16
    with lm.attack_mode(m):
        model = _build(m, h=40, w=56)
        out = advdm.protect(model, x, advdm.ProtectConfig(steps=3, epsilon=8))
        d = advdm.measure(model, x, out, samples=2, max_samples=2)
    assert out.shape == x.shape
    k = out * 255
    assert torch.allclose(k, k.round(), atol=1e-4)
    assert 0 < (k.round() - (x * 255).round()).abs().max() <= 8
    assert d["linf"] <= 8 + 1e-4
    after, flags_after = _snapshot(m)
    assert flags_after == flags and all(torch.equal(before[k], after[k]) for k in before)


def test_refuses_an_unrecognised_sd3_with_one_clear_line():
    from advdm_webui import ldm_model as lm

    m = _SD3Like()
    del m.latent_format  # not the SD3Inferencer interface the adapter knows
    for check in (lm.family, lm.prediction, lambda m: lm.build(m, m.get_learned_conditioning(["x"]))):
        with pytest.raises(lm.UnsupportedModel) as e:
            check(m)
        msg = str(e.value)
        assert msg == lm.SD3_REFUSAL and "\n" not in msg
        assert "SD3" in msg and "ComfyUI" in msg and "python -m advdm" in msg


def test_refuses_other_latent_channel_counts():
    from advdm_webui import ldm_model as lm

    m = _SD3Like()
    m.is_sd3 = False  # e.g. a host that does not set the flag
    with pytest.raises(lm.UnsupportedModel, match="16 latent channels"):
        lm.prediction(m)


# --- textual inversion through the web UI's hijacked CLIP -----------------------------------------

class EmbeddingsWithFixes(torch.nn.Module):
    """As A1111's sd_hijack.EmbeddingsWithFixes: splices embedding files' vectors (none here)
    into the output of the real table, which it calls as wrapped(input_ids)."""

    def __init__(self, wrapped):
        super().__init__()
        self.wrapped = wrapped

    def forward(self, input_ids):
        return self.wrapped(input_ids)


class HijackedCLIP(torch.nn.Module):
    """Stands in for A1111's FrozenCLIPEmbedderWithCustomWords (modules/sd_hijack_clip.py) over
    ldm's FrozenCLIPEmbedder (`wrapped`: transformers' CLIPTextModel + CLIPTokenizer, the
    test-bed's tokenizer): tokenize without special tokens, then one chunk through the
    transformer, its token embedding wrapped as sd_hijack wraps it."""

    def __init__(self, embedding_db=None):
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        from test_textual_inversion import TESTBED

        super().__init__()
        tokenizer = CLIPTokenizer.from_pretrained(TESTBED / "tokenizer")
        torch.manual_seed(3)
        transformer = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=CONTEXT_DIM, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id))
        self.wrapped = torch.nn.Module()
        self.wrapped.transformer, self.wrapped.tokenizer = torch.nn.Module(), tokenizer
        # transformers 4 (A1111's) nests the text model in CLIPTextModel.text_model; 5 does not
        self.wrapped.transformer.text_model = getattr(transformer, "text_model", transformer)
        embeddings = self.wrapped.transformer.text_model.embeddings
        embeddings.token_embedding = EmbeddingsWithFixes(embeddings.token_embedding)
        self.hijack = types.SimpleNamespace(embedding_db=embedding_db)

    def tokenize(self, texts):
        return self.wrapped.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def forward(self, texts):
        t = self.wrapped.tokenizer
        rows = [[t.bos_token_id] + ids[:14] + [t.eos_token_id] * (15 - len(ids[:14])) for ids in self.tokenize(texts)]
        return self.wrapped.transformer.text_model(input_ids=torch.tensor(rows)).last_hidden_state


def tiny_ldm_with_clip(**kw):
    m = tiny_ldm()
    m.cond_stage_model = HijackedCLIP(**kw).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # ldm zero-initialises the attention blocks' proj_out: the prompt would not matter
        for p in m.model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    for p in m.cond_stage_model.parameters():  # ldm's FrozenCLIPEmbedder.freeze()
        p.requires_grad_(False)
    return m


def _with_text(m, h=32, w=48):
    from advdm_webui import ldm_model

    return ldm_model.with_text_route(_build(m, h=h, w=w), m, w, h)


def test_text_route_is_the_real_table_under_the_hijack_and_learns_through_get_learned_conditioning():
    from advdm import diffusion_loss
    from advdm.mimic.textual_inversion import substituted
    from advdm_webui import ldm_model

    m = tiny_ldm_with_clip()
    table = m.cond_stage_model.wrapped.transformer.text_model.embeddings.token_embedding.wrapped
    with ldm_model.attack_mode(m):
        model = _with_text(m)
        route = model.text
        assert list(route.embeddings) == [table] and type(table) is torch.nn.Embedding
        assert list(route.encoders) == [m.cond_stage_model.wrapped]
        (sks,) = route.token_ids("sks")
        assert sks == m.cond_stage_model.tokenize(["sks"])[0][0]
        z = model.encode(_image()).mean.detach()
        sigma, noise = torch.tensor([2.0]), torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
        vector = torch.nn.Parameter(table.weight[sks].detach().clone())
        with substituted(route, "sks", [vector]):
            loss = diffusion_loss(route.prompted("a painting in style sks"), z, sigma, noise).mean()
            loss.backward()
            assert vector.grad is not None and vector.grad.abs().sum() > 0  # through A1111's own encoding
            vector.grad = None
            diffusion_loss(route.prompted("a painting"), z, sigma, noise).mean().backward()
            assert vector.grad is None or vector.grad.abs().sum() == 0  # a prompt without the word: no gradient
    assert all(p.grad is None for p in m.parameters())


def test_textual_inversion_mimicry_check_leaves_the_model_its_clip_and_tokenizer_as_they_were():
    from advdm.evaluation.mimicry import MimicryConfig, mimicry_check
    from advdm.mimic.finetune import FinetuneConfig
    from advdm_webui import ldm_model
    from test_lora import assert_as_before, snapshot

    m = tiny_ldm_with_clip()
    clip = m.cond_stage_model
    vocabulary = dict(clip.wrapped.tokenizer.get_vocab())
    before = snapshot(m)
    config = MimicryConfig(seeds=1, draws=4, finetune=FinetuneConfig(steps=2, batch=1), pictures=1, picture_steps=2,
                           picture_size=32, mimic="textual-inversion", ti_prompt="a painting in style sks", ti_lr=0.05)
    x = [_image(32, 32, seed=s) for s in range(3)]
    with ldm_model.attack_mode(m):
        r = mimicry_check(_with_text(m, 32, 32), x[:2], x[2:], x[:2], config)
    assert r["mimic"] == "textual-inversion" and r["picture_rmse_protected"] == 0
    assert_as_before(m, before)  # UNet, VAE and CLIP: weights, flags, no hook left, modes
    assert clip.wrapped.tokenizer.get_vocab() == vocabulary


def test_textual_inversion_is_refused_by_name_where_there_is_no_route():
    from advdm_webui import ldm_model

    with pytest.raises(ValueError, match="textual inversion on SDXL models is not supported in the A1111 extension"):
        ldm_model.text_models(types.SimpleNamespace(is_sdxl=True))
    with pytest.raises(ValueError, match="TinyEmbedder.*is not one the A1111 extension knows"):
        ldm_model.text_models(tiny_ldm())

    class Files:  # the web UI's embedding database, with a file named sks
        def find_embedding_at_position(self, tokens, offset):
            return (types.SimpleNamespace(name="sks"), 1) if tokens == clip.tokenize(["sks"])[0] else (None, None)

    m = tiny_ldm_with_clip(embedding_db=Files())
    clip = m.cond_stage_model
    with ldm_model.attack_mode(m):
        route = _with_text(m).text
        assert route.token_ids("painting")
        with pytest.raises(ValueError, match="'sks' is the name of the textual-inversion embedding 'sks'"):
            route.token_ids("sks")
        with pytest.raises(ValueError, match="'zqxjkvbwpf' is .* tokens"):
            route.token_ids("zqxjkvbwpf")
