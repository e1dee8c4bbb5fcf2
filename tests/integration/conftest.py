"""The ComfyUI server fixture, shared by the ComfyUI tests so one session runs one server."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import comfy_server  # noqa: E402


@pytest.fixture(scope="session")
def comfy():
    if not comfy_server.COMFYUI_DIR:
        pytest.skip("set COMFYUI_DIR to a ComfyUI checkout to run")
    yield from comfy_server.serve()
