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
