"""Run the Mimicry Check node's textual-inversion mimic in ComfyUI's own interpreter, without
the server, on a checkpoint loaded by ComfyUI itself; print one JSON line of what the test
checks (the report, and whether the UNet and the CLIP are bit-identical afterwards and no
hook is left). Usage: COMFYUI_DIR=... COMFYUI_PYTHON ... comfy_textual_inversion.py CKPT"""
import importlib.util
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMFY = Path(os.environ["COMFYUI_DIR"]).resolve()
os.chdir(COMFY)
sys.path.insert(0, str(COMFY))
sys.path.append(str(REPO))  # after ComfyUI's own `nodes` module
CKPT = sys.argv[1]
sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI parses its own flags at import
import torch  # noqa: E402

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.sd  # noqa: E402

spec = importlib.util.spec_from_file_location("advdm_nodes", REPO / "nodes" / "__init__.py",
                                              submodule_search_locations=[str(REPO / "nodes")])
pack = importlib.util.module_from_spec(spec)
sys.modules["advdm_nodes"] = pack
spec.loader.exec_module(pack)
from advdm_nodes.comfy_mimicry import AdvDMMimicry  # noqa: E402


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(module, before):
    return all(torch.equal(before[k], v) for k, v in module.state_dict().items())


with torch.inference_mode():  # as ComfyUI runs a node
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(CKPT, output_vae=True, output_clip=True)
    clip_before, unet_before = state(clip.cond_stage_model), state(model.model.diffusion_model)
    train = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    out = AdvDMMimicry.execute(model, vae, train, train, seeds=1, steps=2, rank=4, learning_rate=1e-4, draws=4,
                               seed=0, held_out=train[:1], pictures=1, picture_steps=2, picture_size=64,
                               mimic="textual-inversion", clip=clip)
    print(json.dumps({"report": out.result[0], "grid": list(out.result[3].shape),
                      "clip_same": same(clip.cond_stage_model, clip_before),
                      "unet_same": same(model.model.diffusion_model, unet_before),
                      "hooks": sum(len(m._forward_hooks) for m in clip.cond_stage_model.modules())}))
