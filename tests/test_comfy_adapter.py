"""Unit tests of the ComfyUI adapter logic that run without ComfyUI (fakes stand in for
its classes; names mirror ComfyUI's so the class-name based checks are exercised)."""
from __future__ import annotations

import inspect
import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch

import advdm
from nodes import comfy_model as cm
from nodes import image_ops

REPO = Path(__file__).resolve().parents[1]


# --- prediction type and family --------------------------------------------------------

class EPS: ...
class V_PREDICTION(EPS): ...
class EDM(V_PREDICTION): ...
class X0(EPS): ...
class CONST: ...
class IMG_TO_IMG_FLOW(CONST): ...
class ModelSamplingDiscrete(torch.nn.Module): ...
class ModelSamplingDiscreteFlow(torch.nn.Module): ...


def sampling(schedule, kind):
    return type("ModelSampling", (schedule, kind), {})()


@pytest.mark.parametrize("kind,expected", [(EPS, "eps"), (V_PREDICTION, "v"), (CONST, "flow")])
def test_prediction_from_sampling(kind, expected):
    schedule = ModelSamplingDiscreteFlow if kind is CONST else ModelSamplingDiscrete
    assert cm.prediction_from_sampling(sampling(schedule, kind)) == expected


@pytest.mark.parametrize("kind", [EDM, X0, IMG_TO_IMG_FLOW])
def test_unsupported_sampling_is_refused_in_one_line(kind):
    with pytest.raises(cm.UnsupportedModel) as e:
        cm.prediction_from_sampling(sampling(ModelSamplingDiscrete, kind))
    assert kind.__name__ in str(e.value) and "\n" not in str(e.value)


class LatentFormat:
    scale_factor, latent_channels = 1.0, 4

    def process_in(self, z):
        return z * self.scale_factor

    def process_out(self, z):
        return z / self.scale_factor


class SD15(LatentFormat): scale_factor = 0.18215
class SDXL(LatentFormat): scale_factor = 0.13025


class SD3(LatentFormat):
    scale_factor, shift_factor, latent_channels = 1.5305, 0.0609, 16

    def process_in(self, z):
        return (z - self.shift_factor) * self.scale_factor

    def process_out(self, z):
        return z / self.scale_factor + self.shift_factor


class Flux(SD3): scale_factor, shift_factor = 0.3611, 0.1159


def base_model(fmt, unet_config=None, arch=None):
    arch = arch or {SD15: "BaseModel", SDXL: "SDXL", SD3: "SD3", Flux: "Flux"}[fmt]
    m = type(arch, (), {})()
    m.latent_format = fmt()
    m.model_config = type("Cfg", (), {"unet_config": unet_config or {}})()
    return m


def test_family():
    assert cm.check_family(base_model(SD15, {"context_dim": 768}), "eps") == "SD1.x"
    assert cm.check_family(base_model(SD15, {"context_dim": 1024}), "v") == "SD2.x"
    assert cm.check_family(base_model(SD15, {"context_dim": 1024}), "eps") == "SD2.x"
    assert cm.check_family(base_model(SDXL), "eps") == "SDXL"
    assert cm.check_family(base_model(SDXL), "v") == "SDXL"
    assert cm.check_family(base_model(SD3), "flow") == "SD3"
    assert cm.check_family(base_model(Flux), "flow") == "Flux"
    assert cm.latent_scale(Flux()) == (0.3611, 0.1159)
    assert cm.latent_scale(SD15()) == (0.18215, 0.0)


@pytest.mark.parametrize("fmt,arch,prediction", [
    (SD15, "SVD_img2vid", "v"),  # video, SD latents
    (Flux, "Chroma", "flow"),  # a Flux subclass with other conditioning
    (SDXL, "SDXL_instructpix2pix", "eps"),
    (Flux, "Flux", "eps"),  # a flow family with a non-flow schedule
    (SD15, "BaseModel", "flow"),
])
def test_other_families_refused_in_one_line(fmt, arch, prediction):
    with pytest.raises(cm.UnsupportedModel) as e:
        cm.check_family(base_model(fmt, arch=arch), prediction)
    assert "not supported" in str(e.value) and "\n" not in str(e.value)


def test_flow_noise_scale_refused():
    ms = sampling(ModelSamplingDiscreteFlow, CONST)
    ms.noise_scale = 0.5
    with pytest.raises(cm.UnsupportedModel, match="noise scale"):
        cm.prediction_from_sampling(ms)


@pytest.mark.parametrize("family,prediction,res", [
    ("SD1.x", "eps", 512), ("SD2.x", "v", 768), ("SD2.x", "eps", 512), ("SDXL", "eps", 1024),
    ("SD3", "flow", 1024), ("Flux", "flow", 1024)])
def test_train_resolution(family, prediction, res):
    assert cm.train_resolution(family, prediction) == res


class ModelSamplingFlux(torch.nn.Module):
    """Like comfy's: sigma(t) = e^mu / (e^mu + 1/t - 1), .shift is mu."""

    def __init__(self, shift=1.15):
        super().__init__()
        self.shift = shift

    def sigma(self, t):
        return math.exp(self.shift) / (math.exp(self.shift) + (1 / t - 1))


def test_flow_shift_matches_the_hosts_sigma_curve():
    from advdm.models.draws import flow_sigma

    sd3 = sampling(ModelSamplingDiscreteFlow, CONST)
    sd3.shift = 3.0
    assert cm.flow_shift(sd3) == 3.0
    flux = type("ModelSampling", (ModelSamplingFlux, CONST), {})(1.15)
    alpha = cm.flow_shift(flux)
    assert alpha == pytest.approx(math.exp(1.15))
    t = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(flow_sigma(t, alpha), torch.tensor([flux.sigma(v) for v in t.tolist()]), atol=1e-6)
    assert cm.flow_shift(sampling(ModelSamplingDiscreteFlow, CONST)) == 1.0  # no .shift


def test_to_model_latent_uses_process_in():
    z, std = torch.randn(1, 16, 2, 2), torch.rand(1, 16, 2, 2)
    mean, s = cm.to_model_latent(Flux(), z, std)
    assert torch.allclose(mean, (z - 0.1159) * 0.3611) and torch.allclose(s, std * 0.3611)


def test_zero_conditioning_shapes():
    (c, extra), = cm.zero_conditioning(base_model(SD15, {"context_dim": 768}))
    assert c.shape == (1, 77, 768) and extra == {}
    (c, extra), = cm.zero_conditioning(base_model(SDXL, {"context_dim": 2048, "adm_in_channels": 2816}))
    assert c.shape == (1, 77, 2048) and extra["pooled_output"].shape == (1, 1280)
    sd3_cfg = {"adm_in_channels": 2048,
               "context_embedder_config": {"params": {"in_features": 4096, "out_features": 1536}}}
    (c, extra), = cm.zero_conditioning(base_model(SD3, sd3_cfg))
    assert c.shape == (1, 154, 4096) and extra["pooled_output"].shape == (1, 2048)
    (c, extra), = cm.zero_conditioning(base_model(Flux, {"context_in_dim": 4096, "vec_in_dim": 768}))
    assert c.shape == (1, 256, 4096) and extra["pooled_output"].shape == (1, 768)
    (c, extra), = cm.zero_conditioning(base_model(Flux, {"context_in_dim": 64, "vec_in_dim": None}))
    assert c.shape == (1, 256, 64) and extra == {}


def test_batched_conds_repeat_and_cache():
    b = cm.BatchedConds({"c_crossattn": torch.randn(1, 77, 8), "y": torch.randn(1, 4)})
    out = b(3)
    assert out["c_crossattn"].shape == (3, 77, 8) and out["y"].shape == (3, 4)
    assert b(3) is out
    assert torch.equal(out["y"][2], out["y"][0])


# --- encoder posterior -------------------------------------------------------------------

class DiagonalGaussianRegularizer(torch.nn.Module):
    pass


class FakeKL(torch.nn.Module):
    """Shaped like comfy's AutoencoderKL: encoder -> quant_conv -> (mean, logvar)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.Conv2d(3, 8, 8, stride=8)
        self.quant_conv = torch.nn.Conv2d(8, 8, 1)
        self.regularization = DiagonalGaussianRegularizer()
        self.bn = None

    def decode(self, z):  # latent -> pixels in [-1, 1], as comfy's first_stage_model.decode
        return torch.tanh(torch.nn.functional.interpolate(z[:, :3], scale_factor=8))


def test_posterior_mean_std_and_gradient():
    fsm = FakeKL()
    x = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    mean, std = cm.posterior(fsm, x)
    moments = fsm.quant_conv(fsm.encoder(x))
    assert torch.allclose(mean, moments[:, :4])
    assert torch.allclose(std, torch.exp(0.5 * moments[:, 4:]))
    (mean.sum() + std.sum()).backward()
    assert x.grad.abs().sum() > 0


class FakeKL16(FakeKL):
    """A 16-channel latent KL autoencoder without quant_conv, like Flux's / SD3's."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Conv2d(3, 32, 8, stride=8)
        self.quant_conv = None


class Patcher:
    def __init__(self, base, model_sampling):
        self.model, self.model_sampling = base, model_sampling
        self.load_device = torch.device("cpu")
        self.model_options = {"transformer_options": {}}

    def get_model_object(self, name):
        assert name == "model_sampling"
        return self.model_sampling


def fake_base(fmt, arch, prediction, channels, seen, unet_config=None, net=None):
    """A BaseModel-like object whose apply_model follows comfy's model_sampling math: EPS
    scales the input by 1/sqrt(sigma^2 + 1) and returns x - sigma * eps; CONST passes x
    unscaled and returns x - sigma * v."""
    torch.manual_seed(1)
    net = net or torch.nn.Conv2d(channels, channels, 3, padding=1)

    def apply_model(self, x, sigma, transformer_options=None, c_crossattn=None, **extra):
        seen.append({"x": x.detach().clone(), "sigma": sigma.detach().clone(), "ctx": c_crossattn.shape,
                     "extra": sorted(extra)})
        s = sigma.view(-1, 1, 1, 1)
        xc = x if prediction == "flow" else x / (s**2 + 1).sqrt()
        return x - s * net(xc)

    base = type(arch, (), {"apply_model": apply_model})()
    base.latent_format = fmt()
    base.model_config = type("Cfg", (), {"unet_config": unet_config or {}})()
    base.diffusion_model = type("DiT", (), {"patch_size": 2})() if prediction == "flow" else net
    return base


def fake_comfy_model(prediction="eps", family="SD1.x", net=None):
    """A ComfyModel set up by its own _setup (what __enter__ runs after loading) around fakes."""
    seen = []
    flow = prediction == "flow"
    if flow:
        base = fake_base(Flux, "Flux", "flow", 16, seen, {"context_in_dim": 8, "vec_in_dim": 4})
        ms = type("ModelSampling", (ModelSamplingFlux, CONST), {})(1.15)
        vae = type("VAE", (), {"first_stage_model": FakeKL16(), "latent_channels": 16, "downscale_ratio": 8})()
    else:
        kind = V_PREDICTION if prediction == "v" else EPS
        base = fake_base(SD15, "BaseModel", prediction, 4, seen, {"context_dim": 8}, net=net)
        ms = sampling(ModelSamplingDiscrete, kind)
        ms.sigmas = torch.linspace(0.03, 14.6, 1000)
        vae = type("VAE", (), {"first_stage_model": FakeKL(), "latent_channels": 4})()
    m = cm.ComfyModel(Patcher(base, ms), vae, None)
    m.prediction = cm.prediction_from_sampling(ms)
    m.family = cm.check_family(base, m.prediction)
    m._setup(base, ms)
    # what prepare_conds would produce through comfy's extra_conds
    conds = {"c_crossattn": m.conditioning[0][0]}
    if flow:
        conds.update(y=m.conditioning[0][1]["pooled_output"], guidance=torch.tensor([3.5]))
    m.prepare_conds = lambda conditioning, shape, detach: cm.BatchedConds(conds)
    m.seen = seen
    return m


def test_adapter_protects_inference_mode_inputs_within_budget():
    m = fake_comfy_model()
    with torch.inference_mode():  # as a node executes
        image = image_ops.to_8bit_grid(torch.rand(1, 16, 16, 3))
        x = image_ops.split_images(image)[0]
        with torch.inference_mode(False), torch.enable_grad():
            out = advdm.protect(m.diffusion_model, x, advdm.ProtectConfig(epsilon=8, steps=3, samples=2, seed=0))
    assert out.shape == x.shape
    k = out * 255
    assert torch.allclose(k, k.round(), atol=1e-4)
    assert (k.round() - (x * 255).round()).abs().max() <= 8
    assert m.seen and m.seen[-1]["ctx"][0] == 2  # conditioning repeated to the sample batch
    lat = m.encode(x)
    assert lat.mean.shape == (1, 4, 2, 2) and lat.std is not None
    dm = m.diffusion_model
    assert (dm.prediction, dm.pixel_multiple, dm.latent_channels, dm.train_resolution) == ("eps", 8, 4, 512)
    assert dm.sigmas is not None and not dm.flow_logit_normal


# --- the flow branch (SD3 / Flux) -----------------------------------------------------------

def test_flow_model_fields():
    m = fake_comfy_model("flow")
    dm = m.diffusion_model
    assert dm.prediction == "flow" and dm.sigmas is None
    assert dm.flow_shift == pytest.approx(math.exp(1.15)) and dm.flow_logit_normal
    assert dm.pixel_multiple == 16  # VAE 8x times 2x2 patches
    assert dm.latent_channels == 16 and dm.train_resolution == 1024
    assert dm.name == "ComfyUI Flux (flow)"
    (c, extra), = m.conditioning  # zero conditioning shaped from the unet config
    assert c.shape == (1, 256, 8) and extra["pooled_output"].shape == (1, 4)


def test_flow_encode_applies_the_latent_shift_and_scale():
    m = fake_comfy_model("flow")
    x = torch.rand(1, 3, 16, 16)
    moments = m.vae.first_stage_model.encoder(x * 2 - 1)
    lat = m.encode(x)
    assert lat.mean.shape == (1, 16, 2, 2)
    assert torch.allclose(lat.mean, (moments[:, :16] - 0.1159) * 0.3611, atol=1e-6)
    assert torch.allclose(lat.std, torch.exp(0.5 * moments[:, 16:]) * 0.3611, atol=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "flow"])
def test_decode_undoes_the_latent_scale_and_shift(prediction):
    """The purification rows decode the denoiser's latent: the family's process_out, then
    the VAE's decode, mapped from [-1, 1] to [0, 1]."""
    m = fake_comfy_model(prediction)
    x = torch.rand(1, 3, 16, 16)
    fsm = m.vae.first_stage_model
    raw = fsm.quant_conv(fsm.encoder(x * 2 - 1)) if fsm.quant_conv is not None else fsm.encoder(x * 2 - 1)
    mean = raw[:, :raw.shape[1] // 2]
    decoded = m.diffusion_model.decode(m.encode(x).mean)
    assert torch.allclose(decoded, (fsm.decode(mean) + 1) / 2, atol=1e-5)


def test_flow_loss_feeds_the_rectified_flow_input_and_is_the_velocity_loss():
    m = fake_comfy_model("flow")
    dm = m.diffusion_model
    z = torch.randn(1, 16, 4, 4)
    n = torch.randn(2, 16, 4, 4)
    sigma = torch.tensor([0.3, 0.8])
    loss = advdm.diffusion_loss(dm, z, sigma, n)
    fed = m.seen[-1]
    s = sigma.view(-1, 1, 1, 1)
    assert torch.allclose(fed["x"], (1 - s) * z + s * n)  # x = (1 - sigma) z + sigma n
    assert torch.equal(fed["sigma"], sigma)
    assert fed["extra"] == ["guidance", "y"]
    # the velocity loss ||v_hat - (n - z)||^2 with v_hat = (x - D) / sigma
    with torch.no_grad():
        d = m.denoise((1 - s) * z + s * n, sigma)
        v_hat = ((1 - s) * z + s * n - d) / s
        expected = (v_hat - (n - z)).pow(2).flatten(1).mean(1)
    assert torch.allclose(loss, expected, rtol=1e-4, atol=1e-6)


def test_flow_protect_within_budget_and_sigmas_from_the_shifted_logit_normal():
    m = fake_comfy_model("flow")
    with torch.inference_mode():
        x = image_ops.split_images(image_ops.to_8bit_grid(torch.rand(1, 24, 40, 3)))[0]
        with torch.inference_mode(False), torch.enable_grad():
            out = advdm.protect(m.diffusion_model, x, advdm.ProtectConfig(epsilon=4, steps=4, samples=2, seed=3))
    assert out.shape == x.shape
    assert ((out - x) * 255).round().abs().max() <= 4 and (out != x).any()
    assert m.seen[-1]["x"].shape[-2:] == (4, 6)  # 24x40 padded to multiples of 16 -> 32x48 -> latent 4x6
    sig = torch.cat([f["sigma"] for f in m.seen])
    assert ((sig > 0) & (sig < 1)).all()


def test_enter_sets_in_training_and_restores_it(monkeypatch):
    """__enter__/__exit__ against a fake comfy.model_management: in_training is True during
    the attack and restored after, also when setup fails."""
    mm = types.ModuleType("comfy.model_management")
    mm.in_training = False
    mm.loads = []
    mm.load_models_gpu = lambda models, force_full_load=False: mm.loads.append(force_full_load)
    comfy = types.ModuleType("comfy")
    comfy.model_management = mm
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    proto = fake_comfy_model("flow")
    vae = proto.vae
    vae.patcher = object()
    base = fake_base(Flux, "Flux", "flow", 16, [], {"context_in_dim": 8, "vec_in_dim": 4})
    base = _as_module(base)
    m = cm.ComfyModel(Patcher(base, proto.model_sampling), vae, None)
    with m as entered:
        assert mm.in_training is True and mm.loads == [True]
        assert entered.diffusion_model.prediction == "flow"
        assert not torch.is_inference_mode_enabled()
    assert mm.in_training is False
    # a failure inside setup restores it too
    bad = cm.ComfyModel(Patcher(base, proto.model_sampling), type("VAE", (), {"patcher": None})(), None)
    with pytest.raises(AttributeError):
        bad.__enter__()
    assert mm.in_training is False
    # unsupported families are refused before anything is loaded
    edm = type("ModelSampling", (ModelSamplingDiscrete, EDM), {})()
    with pytest.raises(cm.UnsupportedModel):
        cm.ComfyModel(Patcher(base, edm), vae, None).__enter__()
    assert mm.loads == [True, True] and mm.in_training is False


def _as_module(obj):
    """The fake base as an nn.Module (make_trainable_copies / frozen walk modules)."""
    mod = type(type(obj).__name__, (torch.nn.Module,), {"apply_model": type(obj).apply_model})()
    mod.latent_format, mod.model_config = obj.latent_format, obj.model_config
    mod.diffusion_model = torch.nn.Conv2d(16, 16, 1)
    mod.diffusion_model.patch_size = 2
    return mod


# --- image layout ----------------------------------------------------------------------

def test_split_join_roundtrip_keeps_alpha():
    img = torch.rand(2, 5, 7, 4)
    parts = image_ops.split_images(img)
    assert len(parts) == 2 and parts[0].shape == (1, 3, 5, 7)
    back = image_ops.join_images(parts, img)
    assert torch.equal(back, img)


def test_mask_for_index_and_resize():
    mask = torch.zeros(1, 4, 4)
    mask[0, :2] = 1
    m = image_ops.mask_for(mask, 3, 8, 8)  # last mask repeats, resized
    assert m.shape == (1, 1, 8, 8) and m[0, 0, 0, 0] == 1 and m[0, 0, -1, 0] == 0
    assert image_ops.mask_for(None, 0, 8, 8) is None


def test_amplified_maps_budget_to_full_range():
    x = torch.full((1, 3, 2, 2), 0.5)
    p = x.clone()
    p[..., 0, 0] += 16 / 255
    p[..., 1, 1] -= 16 / 255
    a = image_ops.amplified(x, p, 16)
    assert torch.allclose(a[..., 0, 0], torch.ones(1, 3)) and torch.allclose(a[..., 1, 1], torch.zeros(1, 3), atol=1e-6)
    assert torch.allclose(a[..., 0, 1], torch.full((1, 3), 0.5))


# --- progress and cancellation -------------------------------------------------------------

class Bar:
    def __init__(self):
        self.calls = []

    def update_absolute(self, value, total=None, preview=None):
        self.calls.append((value, total, preview is not None))


def test_progress_counts_batch_and_throttles_previews():
    now = [0.0]
    bar = Bar()
    p = cm.Progress(total=6, bar=bar, interrupted=lambda: None, clock=lambda: now[0], preview_every=10)
    img = torch.rand(1, 3, 4, 4)
    for i in range(2):
        cb = p.for_image(i, 3)
        for s in range(1, 4):
            cb(s, 3, img)
    assert [c[0] for c in bar.calls] == [1, 2, 3, 4, 5, 6]
    assert [c[2] for c in bar.calls] == [True, False, True, False, False, True]  # first, each image's last


def test_progress_preview_is_at_the_images_size():
    """ComfyUI shrinks a preview to the max size given and labels it with its size: the label
    must read the image's size (a 96x64 image is not a 512 px preview)."""
    seen = []

    class PreviewBar:
        def update_absolute(self, value, total=None, preview=None):
            seen.append(preview)

    p = cm.Progress(total=1, bar=PreviewBar(), interrupted=lambda: None)
    p.for_image(0, 1)(1, 1, torch.rand(1, 3, 64, 96))
    kind, image, max_size = seen[0]
    assert image.size == (96, 64) and max_size == 96


class Interrupted(BaseException):  # like comfy's InterruptProcessingException
    pass


def test_interrupt_propagates_out_of_protect():
    def interrupted():
        raise Interrupted()

    p = cm.Progress(total=5, bar=Bar(), interrupted=interrupted)
    m = fake_comfy_model()
    with pytest.raises(Interrupted):
        advdm.protect(m.diffusion_model, torch.rand(1, 3, 16, 16), advdm.ProtectConfig(steps=5),
                      progress=p.for_image(0, 5))


# --- the Protect node, against a fake comfy_api ----------------------------------------------------

class _Spec:
    def __init__(self, *args, **kw):
        self.args, self.kw = args, kw


class _Kind:
    Input = Output = _Spec


class _UIText(str):
    def as_dict(self):
        return {"text": [str(self)]}


class _UIImages:
    def __init__(self, image, cls=None):
        self.image = image

    def as_dict(self):
        return {"images": self.image}


class _NodeOutput:
    def __init__(self, *values, ui=None):
        self.values, self.ui = values, ui


class UNetLike(torch.nn.Module):
    """A denoiser with a Linear layer (the LoRA surrogate adapts Linear layers)."""

    def __init__(self, c=4):
        super().__init__()
        torch.manual_seed(2)
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1)
        self.mix = torch.nn.Linear(c, c)

    def forward(self, x):
        return self.mix(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@pytest.fixture
def comfy_nodes(monkeypatch):
    """nodes.comfy_nodes imported against a stand-in comfy_api.latest (schema objects record
    their arguments), removed again afterwards."""
    import importlib

    latest = types.ModuleType("comfy_api.latest")
    latest.IO = types.SimpleNamespace(ComfyNode=object, Schema=_Spec, NodeOutput=_NodeOutput, **{
        k: _Kind for k in ("Model", "Vae", "Clip", "Image", "Combo", "Float", "Int", "Conditioning", "Mask", "Boolean",
                            "String")})
    latest.UI = types.SimpleNamespace(PreviewText=_UIText, PreviewImage=_UIImages)
    latest.ComfyExtension = object
    api = types.ModuleType("comfy_api")
    api.latest = latest
    monkeypatch.setitem(sys.modules, "comfy_api", api)
    monkeypatch.setitem(sys.modules, "comfy_api.latest", latest)
    saved = sys.modules.pop("nodes.comfy_nodes", None)
    try:
        yield importlib.import_module("nodes.comfy_nodes")
    finally:
        sys.modules.pop("nodes.comfy_nodes", None)
        if saved is not None:
            sys.modules["nodes.comfy_nodes"] = saved


class NodeRun:
    """The Protect node's execute with ComfyModel and the progress bar replaced by fakes;
    records every ProtectConfig and every bar update."""

    def __init__(self, comfy_nodes, monkeypatch, interrupt_at=None):
        self.net = UNetLike()
        self.model = fake_comfy_model(net=self.net)
        self.bar, self.configs, self.calls, self.totals = Bar(), [], 0, []
        run = self

        class FakeComfyModel:
            def __init__(self, model, vae, conditioning=None):
                pass

            def __enter__(self):
                return run.model

            def __exit__(self, *exc):
                pass

        def interrupted():
            run.calls += 1
            if interrupt_at is not None and run.calls >= interrupt_at:
                raise Interrupted()

        def progress(total):
            run.totals.append(total)
            return cm.Progress(total=total, bar=run.bar, interrupted=interrupted)

        real = advdm.protect

        def protect(dm, x, config, **kw):
            run.configs.append(config)
            return real(dm, x, config, **kw)

        monkeypatch.setattr(comfy_nodes, "ComfyModel", FakeComfyModel)
        monkeypatch.setattr(comfy_nodes, "Progress", progress)
        monkeypatch.setattr(advdm, "protect", protect)
        self.node = comfy_nodes.AdvDMProtect

    def __call__(self, image, method="anti-dreambooth", steps=4, **optional):
        with torch.inference_mode():  # as ComfyUI executes a node
            return self.node.execute(None, None, image, method, 8.0, steps, 1.0, 1, 0.0, 1.0, 0, **optional)


def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def _hooks(net):
    return sum(len(m._forward_hooks) for m in net.modules())


def test_protect_node_inputs_are_execute_parameters_and_new_ones_optional(comfy_nodes):
    """Old workflows still load: every input after the original required ones is optional and
    execute has a default for it; the surrogate knobs have the core's defaults and bounds."""
    from advdm.settings import PROTECT

    inputs = comfy_nodes.AdvDMProtect.define_schema().kw["inputs"]
    params = inspect.signature(comfy_nodes.AdvDMProtect.execute).parameters
    names = [i.args[0] for i in inputs]
    assert list(params) == names  # same order as the schema
    for spec in inputs:
        if spec.kw.get("optional"):
            assert params[spec.args[0]].default is not inspect.Parameter.empty, spec.args[0]
        assert spec.kw.get("tooltip"), spec.args[0]
    by_name = {i.args[0]: i for i in inputs}
    for knob in ("surrogate_every", "surrogate_steps"):
        spec, k = by_name[knob], PROTECT[knob]
        assert spec.kw["optional"] and (spec.kw["default"], spec.kw["min"], spec.kw["max"]) == (k.default, k.low, k.high)
        assert params[knob].default == k.default
    assert {"ace", "anti-dreambooth", "mist-v2"} <= set(by_name["method"].kw["options"])
    assert names.index("surrogate_every") > names.index("eot_jpeg")  # appended: saved widget lists keep their order


def test_protect_node_passes_the_surrogate_knobs_and_counts_fine_tuning_in_the_bar(comfy_nodes, monkeypatch):
    run = NodeRun(comfy_nodes, monkeypatch)
    before = _state(run.net)
    image = image_ops.to_8bit_grid(torch.rand(2, 16, 24, 3))  # two images: the bar spans the batch
    protected, perturbation = run(image, steps=4, surrogate_every=2, surrogate_steps=3).values
    (config, _) = run.configs
    assert (config.surrogate, config.surrogate_every, config.surrogate_steps) == (True, 2, 3)
    per_image = 4 + 2 * 3  # PGD steps + 2 fine-tuning phases of 3 steps
    assert config.progress_steps == per_image and run.totals == [2 * per_image]
    assert [c[0] for c in run.bar.calls] == list(range(1, 2 * per_image + 1))
    assert {c[1] for c in run.bar.calls} == {2 * per_image} and run.bar.calls[-1][2]  # the last one previews
    assert protected.shape == image.shape and perturbation.shape == image.shape
    assert ((protected * 255).floor() - (image * 255).round()).abs().max() <= 8  # as SaveImage truncates
    after = _state(run.net)  # the surrogate's LoRA is gone: the host's model is as it was
    assert all(torch.equal(before[k], after[k]) for k in before) and _hooks(run.net) == 0
    assert all(p.requires_grad for p in run.net.parameters())  # the flags as they were


def test_protect_node_without_the_new_inputs_uses_the_defaults(comfy_nodes, monkeypatch):
    """A workflow saved before the surrogate inputs existed: the core's defaults, and for
    a method without the surrogate the bar counts PGD steps only, as before."""
    from advdm.settings import PROTECT

    run = NodeRun(comfy_nodes, monkeypatch)
    image = torch.rand(1, 16, 16, 3)
    run(image, method="advdm", steps=3)
    run(image, method="mist-v2", steps=3)
    plain, mist_v2 = run.configs
    assert not plain.surrogate and run.totals[0] == 3
    assert mist_v2.surrogate and mist_v2.method == "mist-v2"
    assert (mist_v2.surrogate_every, mist_v2.surrogate_steps) == (PROTECT["surrogate_every"].default,
                                                                 PROTECT["surrogate_steps"].default)
    assert run.totals[1] == 3 + PROTECT["surrogate_steps"].default  # one phase, before step 0


def test_interrupt_during_the_surrogate_fine_tune_stops_the_node_and_restores_the_model(comfy_nodes, monkeypatch):
    """The surrogate fine-tunes before PGD step 0, so the second progress call is its second
    training step: ComfyUI's interrupt raised there ends the node, and the LoRA is removed."""
    run = NodeRun(comfy_nodes, monkeypatch, interrupt_at=2)
    before = _state(run.net)
    with pytest.raises(Interrupted):
        run(torch.rand(1, 16, 16, 3), steps=4, surrogate_every=2, surrogate_steps=3)
    assert run.calls == 2 and len(run.bar.calls) == 1
    after = _state(run.net)
    assert all(torch.equal(before[k], after[k]) for k in before) and _hooks(run.net) == 0
    assert all(p.requires_grad for p in run.net.parameters())


def test_protect_node_budget_input_is_optional_and_reaches_the_attack(comfy_nodes, monkeypatch):
    """The budget input (appended: saved widget lists keep their order) with the core's choices and
    default; perceptual keeps every pixel of the result within the map of the image."""
    from advdm.attack.budget import BUDGETS, pixel_bound
    from advdm.settings import PROTECT

    inputs = comfy_nodes.AdvDMProtect.define_schema().kw["inputs"]
    names = [i.args[0] for i in inputs]
    spec = inputs[names.index("budget")]
    assert names[-1] == "budget" and spec.kw["optional"]
    assert spec.kw["options"] == list(BUDGETS) and spec.kw["default"] == PROTECT["budget"].default == "uniform"
    from sample_images import half_flat_half_texture

    run = NodeRun(comfy_nodes, monkeypatch)
    image = half_flat_half_texture(16, 24).permute(0, 2, 3, 1)
    (protected, _) = run(image, method="advdm", steps=3, budget="perceptual").values
    run(image, method="advdm", steps=3)
    assert [c.budget for c in run.configs] == ["perceptual", "uniform"]
    original = image.permute(0, 3, 1, 2)
    saved = (protected * 255).floor().permute(0, 3, 1, 2) / 255  # as SaveImage truncates
    bound = pixel_bound(original, 8.0, "perceptual")
    assert bound.min() < 8 and ((saved - original).abs() * 255 - bound).max() <= 1e-3


def test_measure_node_outputs_the_change_map_and_ms_ssim(comfy_nodes, monkeypatch):
    from advdm.evaluation.visibility import change_map

    comfy = types.ModuleType("comfy")
    comfy.model_management = types.SimpleNamespace(throw_exception_if_processing_interrupted=lambda: None)
    comfy.utils = types.SimpleNamespace(ProgressBar=lambda total: Bar())
    for name, module in (("comfy", comfy), ("comfy.model_management", comfy.model_management),
                         ("comfy.utils", comfy.utils)):
        monkeypatch.setitem(sys.modules, name, module)
    run = NodeRun(comfy_nodes, monkeypatch)
    outputs = [o.args[0] for o in comfy_nodes.AdvDMMeasure.define_schema().kw["outputs"]]
    original = image_ops.to_8bit_grid(torch.rand(2, 16, 16, 4))  # with alpha: the map is RGB
    protected = original.clone()
    protected[1, :4, :4, :3] = (protected[1, :4, :4, :3] + 5 / 255).clamp(0, 1)
    protected[0, 8:, 8:, :3] = (protected[0, 8:, 8:, :3] - 3 / 255).clamp(0, 1)
    out = comfy_nodes.AdvDMMeasure.execute(None, None, original, protected, 4, 0, max_samples=4)
    values = dict(zip(outputs, out.values))
    maps = values["change_map"]
    assert outputs[-2:] == ["change_map", "ms_ssim"] and maps.shape == (2, 16, 16, 3)
    for i in range(2):
        expected = change_map(original[i:i + 1, ..., :3].permute(0, 3, 1, 2), protected[i:i + 1, ..., :3].permute(0, 3, 1, 2))
        assert torch.allclose(maps[i], expected[0].permute(1, 2, 0), atol=1e-6)
    assert 0 < values["ms_ssim"] < 1 and "MS-SSIM" in values["report"]


# --- previews and example workflows -------------------------------------------------------------

CORE_NODES = {"CheckpointLoaderSimple", "CLIPTextEncode", "LoadImage", "SaveImage", "PreviewImage", "VAEEncode",
              "VAEDecode", "KSampler", "ImageStitch", "ImageBatch", "EmptyLatentImage", "TrainLoraNode",
              "LoraModelLoader", "PreviewAny"}
OUR_NODES = {"AdvDMProtect", "AdvDMMeasure", "AdvDMMimicry"}


def test_example_workflow_widgets_are_node_inputs():
    comfy_nodes = pytest.importorskip("nodes.comfy_nodes", reason="needs ComfyUI (comfy_api)")
    sigs = {c: set(inspect.signature(getattr(comfy_nodes, c).execute).parameters) for c in ("AdvDMProtect", "AdvDMMeasure")}
    sigs["AdvDMMimicry"] = set(inspect.signature(pytest.importorskip("nodes.comfy_mimicry").AdvDMMimicry.execute).parameters)
    for path in (REPO / "workflows").glob("*.json"):  # API format (not yet converted)
        for node in json.loads(path.read_text()).values():
            if node["class_type"] in sigs:
                assert set(node["inputs"]) <= sigs[node["class_type"]]
    for path in (REPO / "example_workflows").glob("*.json"):
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"] in sigs:
                widgets = {i["name"] for i in node["inputs"] if i.get("widget")}
                assert widgets <= sigs[node["type"]], (path.name, widgets - sigs[node["type"]])



def test_measure_bar_follows_the_draws_and_rows(comfy_nodes):
    """The Measure node's bar moves with every image scored in the real measure(), ends each
    image's share when the measurement stops early, then moves per robustness row; each report
    is a cancel point."""
    from advdm.evaluation.measure import measure

    bar, checks = Bar(), []
    mb = comfy_nodes.MeasureBar(bar, images=2, max_samples=32, rows=2, edits=0, interrupted=lambda: checks.append(1))
    dm = fake_comfy_model().diffusion_model
    x = torch.rand(1, 3, 16, 16)
    y = image_ops.to_8bit_grid((x + 4 / 255 * torch.randn_like(x).sign()).clamp(0, 1))
    measure(dm, image_ops.to_8bit_grid(x), y, samples=4, max_samples=32, precision=0.0, progress=mb.draws(0))
    drawn = [c[0] for c in bar.calls[1:]]
    # a report per image scored (clean, protected, 4 noise images) in each of the 4 doubling rounds, in draws
    assert len(drawn) == 4 * 6 and drawn == sorted(drawn) and drawn[5::6] == [4, 8, 16, 32]
    assert len(set(drawn)) > 8  # moves within the rounds, not only at their ends
    mb.measured(0)
    rows = mb.rows(0)
    rows(1, 2), rows(2, 2)
    mb.draws(1)(8, 32)
    assert [c[0] for c in bar.calls[-4:]] == [32, 64, 96, 96 + 8]
    assert {c[1] for c in bar.calls} == {2 * 32 * 3} and bar.calls[0][0] == 0
    assert len(checks) == len(drawn) + 3


def test_measure_node_runs_the_img2img_check_and_outputs_the_edits(comfy_nodes, monkeypatch):
    """Measure with img2img on: the report gains the img2img lines, the picture comes out as
    an IMAGE and on the node, and the bar counts every sampler step."""
    m = fake_comfy_model(net=UNetLike())
    updates = []

    class FakeComfyModel:
        def __init__(self, *a):
            pass

        def __enter__(self):
            return m

        def __exit__(self, *exc):
            pass

    comfy = types.ModuleType("comfy")
    comfy.utils = types.SimpleNamespace(ProgressBar=lambda total: types.SimpleNamespace(
        update_absolute=lambda value, total=None, preview=None: updates.append((value, total))))
    comfy.model_management = types.SimpleNamespace(throw_exception_if_processing_interrupted=lambda: None)
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.utils", comfy.utils)
    monkeypatch.setitem(sys.modules, "comfy.model_management", comfy.model_management)
    monkeypatch.setattr(comfy_nodes, "ComfyModel", FakeComfyModel)
    clean = image_ops.to_8bit_grid(torch.rand(1, 16, 24, 3))
    protected = image_ops.to_8bit_grid((clean + 4 / 255 * torch.randn_like(clean).sign()).clamp(0, 1))
    with torch.inference_mode():
        out = comfy_nodes.AdvDMMeasure.execute(None, None, clean, protected, 4, 0, max_samples=4, img2img=True,
                                               img2img_strengths="0.5", img2img_seeds=3)
    text, picture = out.values[0], out.values[9]
    assert "img2img (SDEdit" in text and "strength 0.5" in text and "scored the whole image" in text
    assert picture.dim() == 4 and picture.shape[-1] == 3 and picture.shape[2] > 2 * 24  # input + one edit
    assert torch.equal(out.ui["images"], picture) and out.ui["text"] == [text]
    steps = 1 * 3 * 3 * 10  # strengths x seeds x (clean, protected, noise) x sampler steps
    assert updates[-1] == (4 + steps, 4 + steps) and {t for _, t in updates} == {4 + steps}  # max_samples + steps
    assert [v for v, _ in updates] == sorted(v for v, _ in updates) and len(updates) > steps  # one move per step
    with torch.inference_mode():
        plain = comfy_nodes.AdvDMMeasure.execute(None, None, clean, protected, 4, 0, max_samples=4)
    assert "img2img" not in plain.values[0] and plain.values[9].shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match="img2img_strengths"):
        comfy_nodes.AdvDMMeasure.execute(None, None, clean, protected, 4, 0, img2img=True, img2img_strengths="2")

