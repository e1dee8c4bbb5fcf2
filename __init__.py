"""ComfyUI custom node pack entry: AdvDM-family protection against diffusion mimicry.

The host-agnostic core is the sibling package `advdm/`; the nodes live in `nodes/`
(imported relatively: ComfyUI has a top-level module called `nodes`).
"""
import os
import sys

_root = os.path.dirname(os.path.abspath(__file__))
if _root not in sys.path:
    sys.path.append(_root)  # so `import advdm` finds the bundled core

from .nodes.comfy_nodes import comfy_entrypoint  # noqa: E402,F401

WEB_DIRECTORY = None
__all__ = ["comfy_entrypoint"]
