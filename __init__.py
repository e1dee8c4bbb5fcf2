"""ComfyUI custom node pack entry: AdvDM-family protection against diffusion mimicry.

The host-agnostic core is the sibling package `advdm/`; the nodes live in `nodes/`
(imported relatively: ComfyUI has a top-level module called `nodes`).
"""
import os
import sys

_root = os.path.dirname(os.path.abspath(__file__))
if _root not in sys.path:
    sys.path.append(_root)  # so `import advdm` finds the bundled core

try:  # only inside ComfyUI; elsewhere (pytest collecting this repo, the CLI) import nothing
    import comfy_api.latest  # noqa: F401
except ImportError:
    comfy_entrypoint = None
else:
    from .nodes.comfy_nodes import comfy_entrypoint  # noqa: F401

WEB_DIRECTORY = "./web"  # the Measure report shown on the node
__all__ = ["comfy_entrypoint"]
