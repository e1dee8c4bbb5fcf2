"""advdm_webui/webui.py's choice of host (A1111, Forge 2.x, the Forge 1.x forks) without a web
UI: stand-ins for the web UI's `modules` package take its place in sys.modules."""
from __future__ import annotations

import importlib
import sys
import types

import pytest


@pytest.fixture
def webui(monkeypatch):
    modules = types.ModuleType("modules")
    shared = types.ModuleType("modules.shared")
    shared.cmd_opts = types.SimpleNamespace(lowvram=False)
    shared.sd_model = None
    devices = types.ModuleType("modules.devices")
    sd_models = types.ModuleType("modules.sd_models")
    sd_models.reloads = 0

    def forge_model_reload():
        sd_models.reloads += 1

    sd_models.forge_model_reload = forge_model_reload
    modules.shared, modules.devices, modules.sd_models = shared, devices, sd_models
    for name, m in (("modules", modules), ("modules.shared", shared), ("modules.devices", devices),
                    ("modules.sd_models", sd_models)):
        monkeypatch.setitem(sys.modules, name, m)
    monkeypatch.delitem(sys.modules, "advdm_webui.webui", raising=False)
    w = importlib.import_module("advdm_webui.webui")
    w.sd_models = sd_models
    yield w
    sys.modules.pop("advdm_webui.webui", None)


def _host(monkeypatch, webui, *present):
    monkeypatch.setattr(webui, "_has_module", lambda name: name in present)


def test_forge_1x_forks_are_refused_by_name(webui, monkeypatch):
    _host(monkeypatch, webui, "ldm_patched", "modules_forge")  # reForge / Forge Classic
    assert webui.is_forge1() and not webui.is_forge()
    with pytest.raises(webui.UnsupportedModel) as e:
        webui.check_supported()
    assert "reForge" in str(e.value) and "Forge Classic" in str(e.value) and "\n" not in str(e.value)


def test_forge_2_loads_its_checkpoint_before_each_protection(webui, monkeypatch):
    _host(monkeypatch, webui, "backend", "modules_forge")
    assert webui.is_forge() and not webui.is_forge1()
    webui.shared.cmd_opts.lowvram = True  # parsed but ignored by Forge
    webui.check_supported()
    webui.shared.sd_model = types.SimpleNamespace(forge_objects=object())  # a model is loaded already
    webui.ensure_loaded()  # the selection may have changed since (Forge reloads lazily)
    webui.ensure_loaded()
    assert webui.sd_models.reloads == 2  # forge_model_reload every time: a no-op unless the selection changed


def test_a1111_refuses_lowvram_and_loads_nothing(webui, monkeypatch):
    _host(monkeypatch, webui)
    assert not webui.is_forge() and not webui.is_forge1()
    webui.ensure_loaded()
    assert webui.sd_models.reloads == 0
    webui.shared.cmd_opts.lowvram = True
    with pytest.raises(webui.UnsupportedModel, match="lowvram"):
        webui.check_supported()


# --- the HTTP API's request model and the job's progress (fine-tune-aware methods) ---------------

@pytest.fixture
def api(webui, monkeypatch):
    """advdm_webui.api with the web UI's shared state stood in; FastAPI stood in too when it is
    not installed (the request model and its validation are pydantic's)."""
    pydantic = pytest.importorskip("pydantic")
    try:
        import fastapi  # noqa: F401
    except ImportError:
        _stand_in_fastapi(monkeypatch)
    monkeypatch.delitem(sys.modules, "advdm_webui.api", raising=False)
    a = importlib.import_module("advdm_webui.api")
    a.ValidationError = pydantic.ValidationError
    yield a
    sys.modules.pop("advdm_webui.api", None)


def _stand_in_fastapi(monkeypatch):
    class HTTPException(Exception):
        def __init__(self, status_code, detail=None, headers=None):
            super().__init__(detail)
            self.status_code, self.detail = status_code, detail

    parts = {
        "fastapi": dict(Depends=lambda dependency=None: dependency, FastAPI=object, HTTPException=HTTPException),
        "fastapi.exceptions": dict(RequestValidationError=type("RequestValidationError", (Exception,), {})),
        "fastapi.routing": dict(APIRoute=object),
        "fastapi.security": dict(HTTPBasic=lambda: None, HTTPBasicCredentials=object),
    }
    for name, attrs in parts.items():
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, m)


def _request(api, **fields):
    return api.ProtectRequest(images=["x"], **fields)


@pytest.mark.parametrize("bad,field", [
    ({"surrogate_every": 0}, "surrogate_every"), ({"surrogate_every": 1001}, "surrogate_every"),
    ({"surrogate_steps": 0}, "surrogate_steps"), ({"surrogate_steps": 101}, "surrogate_steps"),
    ({"surrogate_rank": 0}, "surrogate_rank"), ({"surrogate_rank": 129}, "surrogate_rank"),
    ({"surrogate_lr": 0}, "surrogate_lr"), ({"surrogate_lr": 0.5}, "surrogate_lr"),
    ({"surrogate_steps": "many"}, "surrogate_steps"), ({"surrogate": "sometimes"}, "surrogate"),
    ({"surrogate_step": 2}, "surrogate_step"),
])
def test_api_refuses_out_of_range_surrogate_fields_by_name(api, bad, field):
    """What BadFieldIs400 turns into the 400's detail names the field."""
    with pytest.raises(api.ValidationError) as e:
        _request(api, **bad)
    detail = api._field_errors(e.value.errors())
    assert detail.split(":")[0] == field, detail


def test_api_schema_has_the_surrogate_knobs_bounds_and_defaults(api):
    from advdm.settings import PROTECT

    model = api.ProtectRequest
    props = (model.model_json_schema() if hasattr(model, "model_json_schema") else model.schema())["properties"]
    for name in ("surrogate_every", "surrogate_steps", "surrogate_rank", "surrogate_lr"):
        k = PROTECT[name]
        assert (props[name]["default"], props[name]["minimum"], props[name]["maximum"]) == (k.default, k.low, k.high)
        assert props[name]["description"] == k.help
    assert props["surrogate"].get("default") is None


def test_api_config_takes_the_surrogate_fields_and_returns_them(api):
    req = _request(api, method="anti-dreambooth", steps=4, surrogate_every=2, surrogate_steps=1, surrogate_rank=2,
                   surrogate_lr=1e-3)
    config = api.make_config(req)
    assert config.surrogate is True  # on by default for anti-dreambooth
    assert (config.surrogate_every, config.surrogate_steps, config.surrogate_rank, config.surrogate_lr) == (2, 1, 2, 1e-3)
    assert config.progress_steps == 4 + 2 * 1
    d = api.config_dict(config, "a painting")
    assert {k: d[k] for k in ("method", "surrogate", "surrogate_every", "surrogate_steps", "surrogate_rank",
                              "surrogate_lr", "prompt")} == {
        "method": "anti-dreambooth", "surrogate": True, "surrogate_every": 2, "surrogate_steps": 1,
        "surrogate_rank": 2, "surrogate_lr": 1e-3, "prompt": "a painting"}

    plain = api.config_dict(api.make_config(_request(api, steps=4)), "a painting")
    assert plain["surrogate"] is False and "surrogate_every" not in plain  # as the PNG metadata has it
    assert api.make_config(_request(api, method="mist-v2")).surrogate is True
    assert api.make_config(_request(api, method="mist-v2", surrogate=False)).progress_steps == api.PRESETS["balanced"]["steps"]
    on = api.make_config(_request(api, method="advdm", surrogate=True, steps=3, surrogate_every=1, surrogate_steps=2))
    assert on.surrogate and on.progress_steps == 3 + 3 * 2


def test_api_refuses_a_surrogate_the_method_cannot_use_with_a_400(api, monkeypatch):
    call_queue = types.ModuleType("modules.call_queue")
    call_queue.queue_lock = None
    monkeypatch.setitem(sys.modules, "modules.call_queue", call_queue)
    with pytest.raises(api.HTTPException) as e:
        api.protect_endpoint(_request(api, method="photoguard", surrogate=True))
    assert e.value.status_code == 400 and "surrogate" in e.value.detail


class _State:
    """modules.shared.state as protect_one uses it; Interrupt is pressed once `interrupt_at`
    progress calls have been seen."""

    def __init__(self, interrupt_at=None):
        self.textinfo, self.job_count, self.job_no = "", 1, 0
        self.sampling_step = self.sampling_steps = 0
        self.calls, self.totals, self.interrupt_at = 0, [], interrupt_at
        self.stopping_generation = False

    @property
    def interrupted(self):
        return self.interrupt_at is not None and self.calls >= self.interrupt_at

    def __setattr__(self, name, value):
        if name == "sampling_step" and value:
            self.calls += 1
            self.totals.append(self.sampling_steps)
        super().__setattr__(name, value)

    def assign_current_image(self, image):
        pass


@pytest.fixture
def tiny_state(webui, monkeypatch, request):
    pytest.importorskip("diffusers")  # the tiny model's classes
    tiny = request.getfixturevalue("tiny")

    def use(state):
        monkeypatch.setattr(webui.shared, "state", state, raising=False)
        monkeypatch.setattr(webui.shared, "opts", types.SimpleNamespace(live_previews_enable=False), raising=False)
        return tiny
    return use


def _weights(network):
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def test_job_progress_counts_the_surrogate_fine_tuning_steps(webui, tiny_state):
    import torch

    import advdm

    state = _State()
    model = tiny_state(state)
    config = advdm.ProtectConfig(method="anti-dreambooth", steps=4, surrogate_every=2, surrogate_steps=1, view="full")
    webui.protect_one(model, torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0)), config,
                      measure=False)
    assert config.progress_steps == 6
    assert state.totals == [6] * 6 and state.sampling_step == 6  # the bar's length from its first step


def test_the_bar_follows_the_measurement_draws(webui, tiny_state):
    """Forge/A1111 draw their bar from sampling_step / sampling_steps: while measuring it must
    move with the draws, not sit at the protection's 100%."""
    import torch

    import advdm

    state = _State()
    model = tiny_state(state)
    config = advdm.ProtectConfig(steps=2, view="full")
    webui.protect_one(model, torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), config,
                      measure_samples=4, measure_max_samples=16)
    measured = state.totals[2:]  # after the two attack steps
    assert measured and set(measured) == {16} and state.sampling_step in (4, 8, 16)
    assert "draws" in state.textinfo


def test_interrupt_stops_the_surrogate_fine_tuning_and_leaves_the_model_as_it_was(webui, tiny_state):
    import traceback

    import torch

    import advdm

    state = _State(interrupt_at=1)  # pressed after the first fine-tuning step, before any attack step
    model = tiny_state(state)
    net = model.denoiser_network
    before = _weights(net)
    flags = [p.requires_grad for p in net.parameters()]
    config = advdm.ProtectConfig(method="mist-v2", steps=4, surrogate_every=4, surrogate_steps=3, view="full")
    with pytest.raises(webui.Interrupted) as e:
        webui.protect_one(model, torch.rand(1, 3, 32, 32), config, measure=False)
    assert state.calls == 1
    assert any(frame.name == "learn" for frame in traceback.extract_tb(e.value.__traceback__))  # in the fine-tune
    after = _weights(net)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in net.parameters()] == flags
    assert not any(m._forward_hooks for m in net.modules())  # the LoRA is gone


# --- POST /advdm/v1/mimicry: the request model, its refusals, and the job with the tiny model ------

def _png_b64(image) -> str:
    import base64

    from advdm.images import png_bytes

    return base64.b64encode(png_bytes(image)).decode()


@pytest.mark.parametrize("bad,field", [
    ({"seeds": 0}, "seeds"), ({"seeds": 33}, "seeds"), ({"steps": 0}, "steps"), ({"steps": "many"}, "steps"),
    ({"rank": 129}, "rank"), ({"lr": 0}, "lr"), ({"lr": 2}, "lr"), ({"batch": 0}, "batch"), ({"draws": 1}, "draws"),
    ({"seed": -1}, "seed"), ({"pictures": 17}, "pictures"), ({"picture_steps": 0}, "picture_steps"),
    ({"picture_size": 4}, "picture_size"), ({"resolution": 5000}, "resolution"), ({"convs": "maybe"}, "convs"),
    ({"train": "x"}, "train"), ({"held_out": [1, [2]]}, "held_out"), ({"draw": 8}, "draw"),
])
def test_mimicry_request_refuses_each_bad_field_by_name(api, bad, field):
    with pytest.raises(api.ValidationError) as e:
        api.MimicryRequest(**{"train": ["x"], "protected": ["x"], **bad})
    detail = api._field_errors(e.value.errors())
    assert detail.split(":")[0].split(".")[0] == field, detail


def test_mimicry_request_has_the_clis_names_defaults_and_bounds(api):
    from advdm.cli import build_parser
    from advdm.settings import MIMICRY

    model = api.MimicryRequest
    props = (model.model_json_schema() if hasattr(model, "model_json_schema") else model.schema())["properties"]
    args = build_parser().parse_args(["mimicry", "--train", "a.png", "--protected", "b.png", "--checkpoint", "x"])
    for name, k in MIMICRY.items():
        assert props[name].get("default") == k.default == getattr(args, name), name
        if k.low is not None:
            p = props[name].get("anyOf", [props[name]])[0]  # Optional[int] under pydantic 2
            assert (p["minimum"], p["maximum"]) == (k.low, k.high), name
    req = model(train=["x"], protected=["x"])
    assert req.held_out == [] and req.prompt == "a painting"


@pytest.mark.parametrize("bad,field", [
    ({"mimic": "dreambooth"}, "mimic"), ({"ti_lr": 0}, "ti_lr"), ({"ti_lr": 2}, "ti_lr"), ({"ti_lr": "fast"}, "ti_lr"),
    ({"ti_prompt": 3}, "ti_prompt"), ({"ti_words": "sks"}, "ti_words"),
])
def test_mimicry_request_refuses_bad_textual_inversion_fields_by_name(api, bad, field):
    with pytest.raises(api.ValidationError) as e:
        api.MimicryRequest(**{"train": ["x"], "protected": ["x"], **bad})
    assert api._field_errors(e.value.errors()).split(":")[0].split(".")[0] == field


def test_mimicry_request_has_the_mimic_fields_with_the_cores_defaults_and_help(api):
    from advdm.settings import MIMICS

    model = api.MimicryRequest
    props = (model.model_json_schema() if hasattr(model, "model_json_schema") else model.schema())["properties"]
    for name, k in MIMICS.items():
        assert props[name].get("default") == k.default and props[name].get("description") == k.help, name
    assert set(props["mimic"].get("enum", [])) == {"lora", "textual-inversion"}
    assert (props["ti_lr"]["minimum"], props["ti_lr"]["maximum"]) == (MIMICS["ti_lr"].low, MIMICS["ti_lr"].high)


@pytest.fixture
def mimicry_api(api, webui, monkeypatch, tiny):
    """The route with a queue lock, the web UI's job state and its loaded model stood in by the
    tiny model: (api, state, model)."""
    import contextlib
    import threading

    call_queue = types.ModuleType("modules.call_queue")
    call_queue.queue_lock = threading.Lock()
    monkeypatch.setitem(sys.modules, "modules.call_queue", call_queue)
    monkeypatch.setitem(sys.modules, "advdm_webui.webui", webui)
    state = _State()
    state.jobs = []
    state.begin = lambda job: state.jobs.append(("begin", job, call_queue.queue_lock.locked()))
    state.end = lambda: state.jobs.append(("end",))
    monkeypatch.setattr(webui.shared, "state", state, raising=False)
    used = []

    @contextlib.contextmanager
    def loaded_model(prompt, width, height, text=False):
        used.append((prompt, width, height))
        state.text = text
        yield getattr(state, "model", tiny)

    monkeypatch.setattr(webui, "loaded_model", loaded_model)
    state.used = used
    return api, state, tiny


QUICK_MIMICRY = {"seeds": 3, "steps": 3, "lr": 1e-2, "rank": 4, "draws": 8, "pictures": 2, "picture_steps": 2,
                 "picture_size": 32}


@pytest.mark.parametrize("body,detail", [
    ({"train": [], "protected": []}, "train: give at least one image"),
    ({"protected": []}, "protected: 0 images for 1 in train"),
    ({"train": ["bm90IGFuIGltYWdl"]}, "train[0]"),
    ({"held_out": ["!!"]}, "held_out[0]"),
    ({"protected": ["small"]}, "protected[0]: size 24x16 differs from train[0] (32x32)"),
])
def test_mimicry_route_refuses_bad_images_by_field_before_taking_the_lock(mimicry_api, body, detail):
    from sample_images import smooth_image

    api, state, _ = mimicry_api
    image = _png_b64(smooth_image(32, 32))
    fields = {"train": [image], "protected": [image], **body}
    if fields["protected"] == ["small"]:
        fields["protected"] = [_png_b64(smooth_image(16, 24))]
    with pytest.raises(api.HTTPException) as e:
        api.mimicry_endpoint(api.MimicryRequest(**fields, **QUICK_MIMICRY))
    assert e.value.status_code == 400 and e.value.detail.startswith(detail), e.value.detail
    assert state.jobs == []


def test_mimicry_route_answers_the_clis_figures_and_the_grid_under_the_lock(mimicry_api):
    import base64
    import io
    import json

    from PIL import Image

    from sample_images import smooth_image

    api, state, tiny = mimicry_api
    train = [_png_b64(smooth_image(32, 32, seed=s)) for s in range(2)]
    before = _weights(tiny.denoiser_network)
    d = api.mimicry_endpoint(api.MimicryRequest(train=train, protected=train, held_out=[_png_b64(smooth_image(32, 32, 9))],
                                                **QUICK_MIMICRY))
    json.dumps(d, allow_nan=False)  # what the web server sends
    assert d["interrupted"] is False and d["learned"], d["summary"]
    assert d["learned_fraction_low"] <= 1 <= d["learned_fraction_high"]  # clean as protected: it learned all
    assert (d["seeds"], d["draws"], d["finetune"]["steps"], d["pictures"]) == (3, 8, 3, 2)
    assert "learned fraction" in d["summary"]
    grid = Image.open(io.BytesIO(base64.b64decode(d["grid"])))
    assert grid.format == "PNG" and grid.width > 2 * 32 and grid.height > 4 * 32  # four rows of two pictures
    assert state.jobs == [("begin", "advdm_mimicry", True), ("end",)]
    # fine-tune steps + sampler steps + blocks of 4 draws scored (3 seeds x 4 models x 3 images x 2 blocks)
    assert state.sampling_step == state.sampling_steps == 3 * 3 * 3 + 2 * (1 + 3 * 3) + 3 * 4 * 3 * 2
    assert state.used == [("a painting", 32, 32)]
    after = _weights(tiny.denoiser_network)
    assert all(torch_equal(before[k], after[k]) for k in before)


@pytest.fixture(scope="module")
def testbed():
    """The test-bed model (tests/test_textual_inversion.py): its text encoder is a route."""
    import torch

    from advdm.models.checkpoints import load_model
    from test_textual_inversion import TESTBED

    return load_model(str(TESTBED), torch.device("cpu"), torch.float32, keep_text=True)


def test_mimicry_route_runs_textual_inversion_on_the_loaded_models_text_route(mimicry_api, testbed):
    from sample_images import smooth_image
    from test_lora import assert_as_before, snapshot

    api, state, _ = mimicry_api
    state.model = testbed
    (encoder,) = testbed.text.encoders
    before = snapshot(encoder), snapshot(testbed.denoiser_network)
    train = [_png_b64(smooth_image(32, 32, seed=s)) for s in range(2)]
    d = api.mimicry_endpoint(api.MimicryRequest(
        train=train, protected=train, held_out=[_png_b64(smooth_image(32, 32, 9))], **{**QUICK_MIMICRY, "pictures": 1},
        mimic="textual-inversion", ti_prompt="a painting in style sks", ti_lr=0.05))
    assert state.text is True  # the host was asked for its text encoder
    assert d["mimic"] == "textual-inversion" and (d["ti_word"], d["ti_lr"]) == ("sks", 0.05)
    assert "textual inversion of 'sks'" in d["summary"] and d["picture_rmse_protected"] == 0
    assert_as_before(encoder, before[0])
    assert_as_before(testbed.denoiser_network, before[1])


def test_mimicry_route_refuses_a_prompt_without_the_word_as_a_400_naming_ti_prompt(mimicry_api):
    from sample_images import smooth_image

    api, state, _ = mimicry_api
    image = _png_b64(smooth_image(32, 32))
    with pytest.raises(api.HTTPException) as e:
        api.mimicry_endpoint(api.MimicryRequest(train=[image], protected=[image], mimic="textual-inversion",
                                                ti_prompt="a painting"))
    assert e.value.status_code == 400 and e.value.detail.startswith("ti_prompt: ") and "'sks'" in e.value.detail
    assert state.jobs == []  # refused before the lock
    d = api.MimicryRequest(train=[image], protected=[image], ti_prompt="a painting")  # the LoRA mimic ignores it
    assert d.mimic == "lora"


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


def test_interrupt_stops_the_mimicry_check_and_leaves_the_model_as_it_was(mimicry_api):
    from sample_images import smooth_image
    from test_lora import assert_as_before, snapshot

    api, state, tiny = mimicry_api
    state.interrupt_at = 4  # during the first fine-tune
    before = snapshot(tiny.denoiser_network)
    image = _png_b64(smooth_image(32, 64))
    d = api.mimicry_endpoint(api.MimicryRequest(train=[image], protected=[image], **QUICK_MIMICRY))
    assert d == {"interrupted": True}
    assert state.calls == 4 and state.jobs[-1] == ("end",)
    assert_as_before(tiny.denoiser_network, before)


# --- POST /advdm/v1/img2img -----------------------------------------------------------------------

QUICK_IMG2IMG = {"strengths": [0.5], "seeds": 3, "steps": 2}


@pytest.mark.parametrize("bad,field", [
    ({"seeds": 0}, "seeds"), ({"seeds": 65}, "seeds"), ({"steps": 0}, "steps"), ({"steps": 201}, "steps"),
    ({"seed": -1}, "seed"), ({"view": "zoom"}, "view"), ({"resolution": 4}, "resolution"),
    ({"strengths": "high"}, "strengths"), ({"strength": [0.3]}, "strength"), ({"original": "x"}, "original"),
])
def test_img2img_request_refuses_each_bad_field_by_name(api, bad, field):
    with pytest.raises(api.ValidationError) as e:
        api.Img2ImgRequest(**{"original": ["x"], "protected": ["x"], **bad})
    detail = api._field_errors(e.value.errors())
    assert detail.split(":")[0].split(".")[0] == field, detail


def test_img2img_request_defaults_are_the_cores(api):
    import inspect

    from advdm.evaluation.img2img import img2img_check
    from advdm.settings import IMG2IMG

    core = inspect.signature(img2img_check).parameters
    req = api.Img2ImgRequest(original=["x"], protected=["x"])
    for name, k in IMG2IMG.items():
        default = tuple(getattr(req, name)) if name == "strengths" else getattr(req, name)
        assert default == k.default == core[name].default, name


@pytest.mark.parametrize("body,detail", [
    ({"strengths": [0.3, 0]}, "strengths[1] must be between 0.01 and 1"),
    ({"strengths": []}, "strengths: give at least one value"),
    ({"original": []}, "original: give at least one image"),
    ({"protected": []}, "protected: 0 images for 1 in original"),
    ({"protected": ["!!"]}, "protected[0]"),
])
def test_img2img_route_refuses_bad_values_and_images_by_field(mimicry_api, body, detail):
    from sample_images import smooth_image

    api, state, _ = mimicry_api
    image = _png_b64(smooth_image(32, 32))
    with pytest.raises(api.HTTPException) as e:
        api.img2img_endpoint(api.Img2ImgRequest(**{"original": [image], "protected": [image], **QUICK_IMG2IMG, **body}))
    assert e.value.status_code == 400 and e.value.detail.startswith(detail), e.value.detail
    assert state.jobs == []


def test_img2img_route_answers_rows_and_a_picture_per_pair_and_keeps_them_on_interrupt(mimicry_api):
    import base64
    import io
    import json

    from PIL import Image

    from sample_images import smooth_image

    api, state, tiny = mimicry_api
    before = _weights(tiny.denoiser_network)
    images = [_png_b64(smooth_image(32, 48, seed=s)) for s in range(2)]
    d = api.img2img_endpoint(api.Img2ImgRequest(original=images, protected=images, **QUICK_IMG2IMG))
    json.dumps(d, allow_nan=False)
    assert d["interrupted"] is False and len(d["pairs"]) == 2
    for pair in d["pairs"]:
        (row,) = pair["img2img"]
        assert row["strength"] == 0.5 and row["seeds"] == 3 and row["distance"] == 0  # clean as protected
        assert row["protects"] is False and "strength 0.5" in pair["summary"]
        picture = Image.open(io.BytesIO(base64.b64decode(pair["picture"])))
        assert picture.format == "PNG" and picture.width >= 2 * 48 and picture.height >= 3 * 32  # inputs, edits
    assert state.jobs == [("begin", "advdm_img2img", True), ("end",)] and state.job_count == 2
    assert state.sampling_steps == 1 * 3 * 3 * 2  # strengths x seeds x 3 images x steps, per pair
    after = _weights(tiny.denoiser_network)
    assert all(torch_equal(before[k], after[k]) for k in before)

    state.calls, state.interrupt_at = 0, 18 + 3  # during the second pair
    d = api.img2img_endpoint(api.Img2ImgRequest(original=images, protected=images, **QUICK_IMG2IMG))
    assert d["interrupted"] is True and len(d["pairs"]) == 1  # the first pair's figures kept


# --- the Check section's inputs (no Gradio needed for these) -------------------------------------

@pytest.fixture
def check_ui(webui, monkeypatch):
    gradio = types.ModuleType("gradio")
    gradio.__version__ = "3.41.2"
    call_queue = types.ModuleType("modules.call_queue")
    monkeypatch.setitem(sys.modules, "gradio", gradio)
    monkeypatch.setitem(sys.modules, "modules.call_queue", call_queue)
    webui.shared.opts = types.SimpleNamespace()
    sys.modules["modules"].call_queue = call_queue
    for name in ("advdm_webui.ui", "advdm_webui.check_ui"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    c = importlib.import_module("advdm_webui.check_ui")
    yield c
    for name in ("advdm_webui.ui", "advdm_webui.check_ui"):
        sys.modules.pop(name, None)


def test_check_section_reads_strengths_and_names_a_bad_one(check_ui):
    assert check_ui.parse_strengths("0.3, 0.5") == (0.3, 0.5) == check_ui.parse_strengths(" 0.3 0.5 ")
    with pytest.raises(ValueError, match="img2img strengths: expected numbers"):
        check_ui.parse_strengths("0.3, half", "img2img strengths")
    with pytest.raises(ValueError, match=r"img2img strengths: each strength must be between 0.01 and 1"):
        check_ui.parse_strengths("0.3, 1.5", "img2img strengths")
    with pytest.raises(ValueError, match="at least one"):
        check_ui.parse_strengths("", "img2img strengths")


def test_check_section_pairs_uploads_or_the_images_just_protected(check_ui, tmp_path):
    from advdm.images import save_png

    from sample_images import smooth_image

    files = []
    for i, name in enumerate(("a.png", "a_protected.png", "b.png", "b_protected.png", "held.png")):
        files.append(save_png(tmp_path / name, smooth_image(16, 24, seed=i)))
    a, pa, b, pb, held = (str(f) for f in files)
    just = check_ui.JUST_PROTECTED
    with pytest.raises(ValueError, match="nothing was protected in this tab yet"):
        check_ui.image_sets([a], just, None, None)
    with pytest.raises(ValueError, match="upload the clean images"):
        check_ui.image_sets(None, check_ui.UPLOADED, [pa], None)
    with pytest.raises(ValueError, match="2 clean images but 1 protected copies"):
        check_ui.image_sets([a, b], check_ui.UPLOADED, [pa], None)
    clean, protected, held_out = check_ui.image_sets([a, b], check_ui.UPLOADED, [pa, pb], [held])
    assert [len(clean), len(protected), len(held_out)] == [2, 2, 1]
    assert torch_equal(protected[1], smooth_image(16, 24, seed=3).float())

    check_ui.remember([(files[0], files[1])])  # the tab protected a.png into a_protected.png
    clean, protected, _ = check_ui.image_sets(None, just, [pb], None)  # the upload box is not used
    assert torch_equal(clean[0], smooth_image(16, 24, seed=0).float())  # the original stands in for the clean one
    assert torch_equal(protected[0], smooth_image(16, 24, seed=1).float())
    with pytest.raises(ValueError, match="2 clean images but 1 protected"):
        check_ui.image_sets([a, b], just, None, None)
def test_api_budget_field_reaches_the_config_and_a_bad_one_is_a_400_naming_it(api):
    from advdm.attack.budget import BUDGETS
    from advdm.settings import PROTECT

    with pytest.raises(api.ValidationError) as e:
        _request(api, budget="invisible")
    detail = api._field_errors(e.value.errors())
    assert detail.split(":")[0] == "budget", detail  # BadFieldIs400 sends this as the 400's detail
    model = api.ProtectRequest
    props = (model.model_json_schema() if hasattr(model, "model_json_schema") else model.schema())["properties"]
    assert props["budget"]["default"] == PROTECT["budget"].default and props["budget"]["description"] == PROTECT["budget"].help
    assert api.make_config(_request(api)).budget == "uniform"
    config = api.make_config(_request(api, budget="perceptual", epsilon=16))
    assert (config.budget, config.epsilon) == ("perceptual", 16) and set(BUDGETS) == {"uniform", "perceptual"}
    assert api.config_dict(config, "a painting")["budget"] == "perceptual"  # in the response and the PNG's metadata


def test_check_section_reads_the_mimic_control_and_names_a_bad_prompt(check_ui):
    sliders = dict(seeds=2, steps=3, rank=4, lr=1e-4, draws=8, seed=0, pictures=1, picture_steps=2, picture_size=0,
                   resolution=0)
    assert check_ui.mimicry_config(**sliders, mimic="LoRA", ti_prompt="anything").mimic == "lora"
    c = check_ui.mimicry_config(**sliders, mimic="Textual inversion", ti_prompt="a sks painting", ti_lr=0.01)
    assert (c.mimic, c.ti_prompt, c.ti_lr, c.finetune.steps) == ("textual-inversion", "a sks painting", 0.01, 3)
    with pytest.raises(ValueError, match="does not contain the learned word 'sks'"):
        check_ui.mimicry_config(**sliders, mimic="Textual inversion", ti_prompt="a painting")
    with pytest.raises(ValueError, match="Learning rate of the word must be between"):
        check_ui.mimicry_config(**sliders, mimic="Textual inversion", ti_lr=0)
