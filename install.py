"""Run by Automatic1111 / Forge (and ComfyUI-Manager) when the extension is installed or the
web UI starts: installs only what is missing, never torch (the host's own build stays)."""
import importlib.util
import subprocess
import sys

# module name -> pip requirement. torch, numpy and Pillow come with every host.
NEEDED = {
    "safetensors": "safetensors",
}


def _missing():
    return [req for mod, req in NEEDED.items() if importlib.util.find_spec(mod) is None]


def main():
    missing = _missing()
    if not missing:
        return
    try:
        import launch  # A1111 / Forge only; ComfyUI-Manager has no such module
    except ImportError:
        launch = None
    for req in missing:
        if launch is not None and hasattr(launch, "run_pip"):
            launch.run_pip(f"install {req}", f"advdm requirement: {req}")
        else:
            subprocess.check_call([sys.executable, "-m", "pip", "install", req])


main()
