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
