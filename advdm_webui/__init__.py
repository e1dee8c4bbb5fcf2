"""Automatic1111 / Forge host adapter of the advdm protection (the extension's scripts/ are thin).

ldm_model (A1111's ldm / sgm models) and forge_model (Forge 2.x's forge_objects) import nothing
from the web UI (unit-tested against the real ldm classes and Forge's backend classes);
webui (host glue: model, progress, queue), ui (the Protect tab) and api (HTTP route)
import the web UI's modules and only run inside it.
"""
