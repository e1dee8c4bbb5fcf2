"""A real ComfyUI for the integration tests: started on 127.0.0.1 (free port, temp input /
output / user dirs and database) with this repository linked into its custom_nodes, stopped
after. Shared by test_comfyui.py and test_comfyui_browser.py through the `comfy` fixture
(conftest.py), so a session runs one server.

Environment: COMFYUI_DIR (required), COMFYUI_PYTHON (default: this interpreter),
ADVDM_TEST_CACHE (default ~/.cache/advdm-tests) for the checkpoints. COMFYUI_SERVER: a file
written by `python comfy_server.py FILE` (a server kept running between test files, e.g. to
build templates or to hold the heavy lock per test file only): the tests use that server.
"""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np

import comfy_workflows

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
REPO = Path(__file__).resolve().parents[2]
CKPT_NAME = "advdm_random_sd15.safetensors"
STOCK_NAME = "v1-5-pruned-emaonly.safetensors"  # what the templates' loaders name: an alias of CKPT_NAME


def cache_dir() -> Path:
    return Path(os.environ.get("ADVDM_TEST_CACHE", Path.home() / ".cache" / "advdm-tests")) / "checkpoints"


def checkpoint(name: str, family: str) -> str:
    """A random-weight checkpoint of that family in the cache (built on first use); its name."""
    ckpt = cache_dir() / name
    if not ckpt.exists():
        subprocess.run([os.environ.get("COMFYUI_PYTHON", sys.executable), str(REPO / "tests" / "integration" / "comfy_checkpoint.py"),
                        str(ckpt), "--family", family], check=True,
                       env={**os.environ, "COMFYUI_DIR": str(Path(COMFYUI_DIR).resolve())})
    return name


def artwork(h, w, seed):
    """A blocky colour image (non-multiple-of-8 sizes exercise the core's padding)."""
    rng = np.random.default_rng(seed)
    small = rng.random((-(-h // 8), -(-w // 8), 3))
    return (np.kron(small, np.ones((8, 8, 1)))[:h, :w] * 255).astype(np.uint8)


class Comfy:
    def __init__(self, base: str, proc: subprocess.Popen, dirs: dict):
        self.base, self.proc, self.dirs = base, proc, dirs

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def get(self, path):
        with urllib.request.urlopen(self.base + path, timeout=60) as r:
            return json.load(r)

    def post(self, path, payload=None):
        data = json.dumps(payload or {}).encode()
        req = urllib.request.Request(self.base + path, data, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            raise AssertionError(f"POST {path} -> {e.code}: {e.read().decode()[:2000]}") from None
        return json.loads(body) if body else None

    def upload(self, name: str, rgb: np.ndarray):
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "PNG")
        b = uuid.uuid4().hex
        body = (f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                f"Content-Type: image/png\r\n\r\n").encode() + buf.getvalue() + (
                f'\r\n--{b}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n--{b}--\r\n').encode()
        req = urllib.request.Request(self.base + "/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={b}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.load(r)["name"]

    def example(self, name: str) -> dict:
        """An example workflow as the API-format graph the frontend would submit."""
        if not hasattr(self, "_object_info"):
            self._object_info = self.get("/object_info")
        return comfy_workflows.to_api(comfy_workflows.example(name), self._object_info)

    def submit(self, graph) -> str:
        return self.post("/prompt", {"prompt": graph, "client_id": "advdm-test"})["prompt_id"]

    def wait(self, prompt_id, timeout=1800) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            assert self.alive(), "ComfyUI exited:\n" + self.log_tail()
            h = self.get(f"/history/{prompt_id}")
            if prompt_id in h and h[prompt_id].get("status", {}).get("completed") is not None:
                return h[prompt_id]
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def run(self, graph, timeout=1800) -> dict:
        entry = self.wait(self.submit(graph), timeout)
        errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
        assert entry["status"]["status_str"] == "success", (
            "workflow failed: " + "\n".join(e.get("exception_message", "") + "".join(e.get("traceback", [])) for e in errors))
        return entry

    def output_file(self, entry, node: str, index=0) -> Path:
        img = entry["outputs"][node]["images"][index]
        root = Path(self.dirs[img["type"]])
        path = root / img.get("subfolder", "") / img["filename"]
        if not path.exists():  # --temp-directory X puts temp files in X/temp
            path = next(root.rglob(img["filename"]))
        return path

    def log_tail(self, n=60):
        p = Path(self.dirs["log"])
        return "\n".join(p.read_text(errors="replace").splitlines()[-n:]) if p.exists() else ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def attach(state_file: str) -> Comfy:
    """The server a `python comfy_server.py FILE` keeps running."""
    state = json.loads(Path(state_file).read_text())
    return Comfy(state["base"], None, state["dirs"])


def serve():
    """Start the server (building the SD1.5 checkpoint first if needed), yield a Comfy, stop it."""
    if os.environ.get("COMFYUI_SERVER"):
        yield attach(os.environ["COMFYUI_SERVER"])
        return
    comfy_dir = Path(COMFYUI_DIR).resolve()
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    ckpt_dir = cache_dir()
    checkpoint(CKPT_NAME, "sd15")
    alias = ckpt_dir / STOCK_NAME  # so the templates run as they open
    if not alias.exists():
        alias.symlink_to(CKPT_NAME)

    tmp = Path(tempfile.mkdtemp(prefix="advdm-comfy-"))
    dirs = {k: tmp / k for k in ("input", "output", "temp", "user")}
    for d in dirs.values():
        d.mkdir()
    dirs["log"] = tmp / "server.log"
    extra = tmp / "extra_model_paths.yaml"
    extra.write_text(f"advdm_tests:\n    checkpoints: {ckpt_dir}\n")

    link = comfy_dir / "custom_nodes" / "comfyui-advdm-test"
    created_link = False
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
        created_link = True
    port = _free_port()
    cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--extra-model-paths-config", str(extra), "--input-directory", str(dirs["input"]),
           "--output-directory", str(dirs["output"]), "--temp-directory", str(dirs["temp"]),
           "--user-directory", str(dirs["user"]), "--database-url", f"sqlite:///{tmp / 'comfy.db'}",
           "--disable-auto-launch"]
    log = open(dirs["log"], "w")
    proc = subprocess.Popen(cmd, cwd=comfy_dir, stdout=log, stderr=subprocess.STDOUT)
    server = Comfy(f"http://127.0.0.1:{port}", proc, {k: str(v) for k, v in dirs.items()})
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                raise RuntimeError("ComfyUI exited at start:\n" + server.log_tail())
            try:
                server.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.time() - t0 > 300:
                    raise TimeoutError("ComfyUI did not start in 300 s:\n" + server.log_tail())
                time.sleep(1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if created_link:
            link.unlink()
        print("\nComfyUI log tail:\n" + server.log_tail(25))


if __name__ == "__main__":  # keep a server running: python comfy_server.py STATE_FILE (Ctrl-C / SIGTERM stops it)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = serve()
    comfy = next(server)
    Path(sys.argv[1]).write_text(json.dumps({"base": comfy.base, "dirs": comfy.dirs, "pid": comfy.proc.pid}))
    print(f"ComfyUI at {comfy.base} (state in {sys.argv[1]})", flush=True)
    try:
        comfy.proc.wait()
    finally:
        server.close()
