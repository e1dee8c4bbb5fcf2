"""A1111 / Forge entry point: the Protect tab, its settings and POST /advdm/v1/protect.
Thin on purpose: everything lives in the advdm (core) and advdm_webui (host) packages, which
are imported now, while the web UI has this extension's root on sys.path."""
from modules import script_callbacks

import advdm  # noqa: F401  (imported while the extension root is on sys.path)
from advdm_webui import api, ui

script_callbacks.on_ui_settings(ui.on_ui_settings)
script_callbacks.on_ui_tabs(ui.on_ui_tabs)
script_callbacks.on_app_started(lambda demo, app: api.register(app))
