"""Unit tests of the ComfyUI adapter logic that run without ComfyUI (fakes stand in for
its classes; names mirror ComfyUI's so the class-name based checks are exercised)."""
from __future__ import annotations

import inspect
import json
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


class SD15: scale_factor = 0.18215
class SDXL: scale_factor = 0.13025
class Flux: scale_factor = 0.3611; shift_factor = 0.1159


def base_model(fmt, unet_config=None):
    m = type("BaseModel", (), {})()
    m.latent_format = fmt()
    m.model_config = type("Cfg", (), {"unet_config": unet_config or {}})()
    return m


def test_family():
    assert cm.check_family(base_model(SD15), "eps") == "SD1.x/SD2.x"
    assert cm.check_family(base_model(SD15), "v") == "SD1.x/SD2.x"
    assert cm.check_family(base_model(SDXL), "eps") == "SDXL"
    with pytest.raises(cm.UnsupportedModel, match="not supported"):
        cm.check_family(base_model(Flux), "flow")
    assert cm.latent_scale(Flux()) == (0.3611, 0.1159)
    assert cm.latent_scale(SD15()) == (0.18215, 0.0)


def test_zero_conditioning_shapes():
    (c, extra), = cm.zero_conditioning(base_model(SD15, {"context_dim": 768}))
    assert c.shape == (1, 77, 768) and extra == {}
    (c, extra), = cm.zero_conditioning(base_model(SDXL, {"context_dim": 2048, "adm_in_channels": 2816}))
    assert c.shape == (1, 77, 2048) and extra["pooled_output"].shape == (1, 1280)


def test_batched_conds_repeat_and_cache():
    b = cm.BatchedConds({"c_crossattn": torch.randn(1, 77, 8), "y": torch.randn(1, 4)})
    out = b(3)
    assert out["c_crossattn"].shape == (3, 77, 8) and out["y"].shape == (3, 4)
    assert b(3) is out
    assert torch.equal(out["y"][2], out["y"][0])


# --- inference tensors -----------------------------------------------------------------

def test_make_trainable_copies_allows_backward_and_keeps_values():
    with torch.inference_mode():
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
        x_inf = torch.rand(1, 3, 8, 8)
    before = [p.clone() for p in net.parameters()]
    assert all(p.is_inference() for p in net.parameters())
    with torch.inference_mode(False), torch.enable_grad():
        counts = cm.make_trainable_copies([net])
        assert counts["parameters"] == 4 and counts["buffers"] >= 2
        x = x_inf.clone().requires_grad_(True)
        net(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for p, q in zip(net.parameters(), before):
        assert not p.is_inference() and not p.requires_grad and torch.equal(p, q)
        assert p.grad is None
    with torch.inference_mode():  # sampling afterwards still works
        net(torch.rand(1, 3, 8, 8))


def test_make_trainable_copies_refuses_inference_mode():
    with torch.inference_mode():
        with pytest.raises(RuntimeError):
            cm.make_trainable_copies([torch.nn.Linear(2, 2)])


def test_frozen_restores_flags():
    net = torch.nn.Linear(2, 2)
    with cm.frozen([net]):
        assert not any(p.requires_grad for p in net.parameters())
    assert all(p.requires_grad for p in net.parameters())


def test_ordinary_clones_nested_inference_tensors():
    with torch.inference_mode():
        cond = [[torch.randn(1, 4, 8), {"pooled_output": torch.randn(1, 8), "x": 1}]]
    out = cm.ordinary(cond)
    assert not out[0][0].is_inference() and not out[0][1]["pooled_output"].is_inference()
    assert out[0][1]["x"] == 1


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


def test_posterior_mean_std_and_gradient():
    fsm = FakeKL()
    x = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    mean, std = cm.posterior(fsm, x)
    moments = fsm.quant_conv(fsm.encoder(x))
    assert torch.allclose(mean, moments[:, :4])
    assert torch.allclose(std, torch.exp(0.5 * moments[:, 4:]))
    (mean.sum() + std.sum()).backward()
    assert x.grad.abs().sum() > 0


def fake_comfy_model(prediction="eps"):
    """A ComfyModel wired by hand, the way __enter__ would, around fakes."""
    m = cm.ComfyModel.__new__(cm.ComfyModel)
    m.vae = type("VAE", (), {"first_stage_model": FakeKL(), "latent_channels": 4})()
    torch.manual_seed(1)
    unet = torch.nn.Conv2d(4, 4, 3, padding=1)
    ctx_seen = []

    class Base:
        latent_format = SD15()

        def apply_model(self, x, sigma, transformer_options=None, c_crossattn=None):
            ctx_seen.append(c_crossattn.shape)
            s = sigma.view(-1, 1, 1, 1)
            return x - s * unet(x / (s**2 + 1).sqrt())

    m.base = Base()
    m.conditioning = [[torch.zeros(1, 77, 8), {}]]
    m._conds_by_shape = {(1, 4, 2, 2): cm.BatchedConds({"c_crossattn": torch.zeros(1, 77, 8)})}
    m.prediction, m.family = prediction, "SD1.x/SD2.x"
    m.sigmas = torch.linspace(0.03, 14.6, 1000)
    m.device, m.vae_device, m.vae_dtype = torch.device("cpu"), torch.device("cpu"), torch.float32
    m.scale, m.shift, m.downscale = 0.18215, 0.0, 8
    m.transformer_options = {}
    m.ctx_seen = ctx_seen
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
    assert m.ctx_seen and m.ctx_seen[-1][0] == 2  # conditioning repeated to the sample batch
    lat = m.encode(x)
    assert lat.mean.shape == (1, 4, 2, 2) and lat.std is not None


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


# --- workflows -----------------------------------------------------------------------------

CORE_NODES = {"CheckpointLoaderSimple", "CLIPTextEncode", "LoadImage", "SaveImage", "PreviewImage", "VAEEncode",
              "VAEDecode", "KSampler", "ImageStitch", "ImageBatch", "EmptyLatentImage", "TrainLoraNode",
              "LoraModelLoader", "PreviewAny"}
OUR_NODES = {"AdvDMProtect", "AdvDMMeasure"}


@pytest.mark.parametrize("path", sorted((REPO / "workflows").glob("*.json")), ids=lambda p: p.name)
def test_workflow_is_a_valid_api_graph(path):
    graph = json.loads(path.read_text())
    assert graph
    for nid, node in graph.items():
        assert node["class_type"] in CORE_NODES | OUR_NODES, node["class_type"]
        for v in node["inputs"].values():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
                assert v[0] in graph, f"{path.name}: node {nid} links to missing node {v[0]}"


def test_workflow_inputs_match_node_signatures():
    comfy_nodes = pytest.importorskip("nodes.comfy_nodes", reason="needs ComfyUI (comfy_api)")
    sigs = {n: set(inspect.signature(getattr(comfy_nodes, c).execute).parameters)
            for n, c in (("AdvDMProtect", "AdvDMProtect"), ("AdvDMMeasure", "AdvDMMeasure"))}
    for path in (REPO / "workflows").glob("*.json"):
        for node in json.loads(path.read_text()).values():
            if node["class_type"] in sigs:
                assert set(node["inputs"]) <= sigs[node["class_type"]]
