"""Random-weight models for the Forge integration test; run with Forge's interpreter.

    python tests/integration/forge_setup.py sdxl-checkpoint FORGE_DIR OUT.safetensors [--seed 0]
        a reduced SDXL checkpoint in the original sgm key layout that Forge detects as SDXL and
        loads with its StableDiffusionXL engine. Forge detects the family from the UNet's key
        shapes (huggingface_guess) and builds the text encoders and the VAE from the full-size
        configs it ships (backend/huggingface/stabilityai/stable-diffusion-xl-base-1.0), so only
        the UNet can shrink, and only to a shape huggingface_guess lists among the SDXL variants:
        Segmind Vega's (model_channels 320, transformer depths [0, 0, 1, 1, 2, 2], context 2048,
        adm 2816), with one transformer block in the middle. About 1.6B parameters (CLIP-G is
        0.7B), 3.2 GB in fp16; Forge runs it in fp32 on the CPU (about 7 GB).
    python tests/integration/forge_setup.py sd2-checkpoint|sd2_v-checkpoint FORGE_DIR OUT.safetensors [--seed 0]
        a reduced SD2 (eps) checkpoint Forge detects as SD2 (huggingface_guess's SD20 reads only
        the UNet's channels, context width and projections, so its levels can shrink): 320
        channels at every level, the full-size VAE and OpenCLIP-H text encoder Forge builds from
        backend/huggingface/stabilityai/stable-diffusion-2-1 (23 layers), written in the
        open_clip layout. About 0.6B parameters, 1.2 GB in fp16. sd2_v-checkpoint: the same,
        with the norm bias by which huggingface_guess (like ComfyUI) tells a 768-v checkpoint;
        Forge itself takes v from a .yaml beside the file, as users set up a 768-v model.
    python tests/integration/forge_setup.py lora SD15.safetensors OUT.safetensors [--seed 0]
        a random kohya-format LoRA (rank 4, lora_unet_* keys) on every cross-attention
        projection of the SD1.5 checkpoint's UNet, strong enough to change what it generates.

Shapes come from Forge's own classes built on the meta device; nothing here is Forge code.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VEGA_UNET = dict(
    in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4],
    transformer_depth=[0, 0, 1, 1, 2, 2], transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2],
    transformer_depth_middle=1, context_dim=2048, num_head_channels=64, use_linear_in_transformer=True,
    use_spatial_transformer=True, adm_in_channels=2816, num_classes="sequential",
)
# SD2 at SD20's detected shape (320 channels, context 1024, linear projections) with one
# channel width at every level: ComfyUI's convert_config of v2-inference.yaml so reduced.
SD2_UNET = dict(
    in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 1, 1, 1],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    transformer_depth_middle=1, context_dim=1024, num_head_channels=64, use_linear_in_transformer=True,
    use_spatial_transformer=True,
)
# family -> UNet config, Forge's folder of full-size configs, text encoders {prefix: (folder, class)}, the
# model_list class that saves the text encoders, and the class huggingface_guess must take the file for
FAMILIES = {
    "sdxl": (VEGA_UNET, ("backend", "huggingface", "stabilityai", "stable-diffusion-xl-base-1.0"),
             {"clip_l.transformer.": ("text_encoder", "CLIPTextModel"),
              "clip_g.transformer.": ("text_encoder_2", "CLIPTextModelWithProjection")}, "SDXL", "Segmind_Vega"),
    "sd2": (SD2_UNET, ("backend", "huggingface", "stabilityai", "stable-diffusion-2-1"),
            {"clip_h.transformer.": ("text_encoder", "CLIPTextModel")}, "SD20", "SD20"),
}
FAMILIES["sd2_v"] = FAMILIES["sd2"]  # with the norm bias that makes SD20 say v (see comfy_checkpoint's sd2_v)


def _forge_path(forge: str) -> None:
    for p in (forge, os.path.join(forge, "packages_3rdparty"), os.path.join(forge, "repositories", "huggingface_guess")):
        if p not in sys.path:
            sys.path.append(p)
    sys.argv[1:] = ["--always-cpu"]  # Forge's backend parses the command line at import


def checkpoint(family: str, forge: str, out: str, seed: int) -> None:
    """A reduced random checkpoint of that family (sdxl or sd2), in the original layout."""
    if os.path.exists(out):
        return
    import torch
    import transformers

    _forge_path(forge)
    import huggingface_guess
    from huggingface_guess import model_list

    from backend.nn.unet import IntegratedUNet2DConditionModel
    from backend.nn.vae import IntegratedAutoencoderKL

    sys.path.insert(0, HERE)
    from a1111_setup import _random_state_dict, _save
    from comfy_checkpoint import SD2_V_KEY

    unet_config, repo_path, encoders, kind, guessed = FAMILIES[family]
    repo = os.path.join(forge, *repo_path)
    with torch.device("meta"):
        unet = IntegratedUNet2DConditionModel(**unet_config)
        vae = IntegratedAutoencoderKL.from_config(IntegratedAutoencoderKL.load_config(os.path.join(repo, "vae")))
        text = {prefix: getattr(transformers, model)(transformers.CLIPTextConfig.from_pretrained(os.path.join(repo, folder)))
                for prefix, (folder, model) in encoders.items()}

    class Parts(torch.nn.Module):
        def state_dict(self, *a, **k):
            sd = {"model.diffusion_model." + n: v for n, v in unet.state_dict().items()}
            sd.update({"first_stage_model." + n: v for n, v in vae.state_dict().items()})
            return sd

    tensors = _random_state_dict(Parts(), seed)
    if family == "sd2_v":
        tensors[SD2_V_KEY] = (torch.randn(tensors[SD2_V_KEY].shape, generator=torch.Generator().manual_seed(seed)) * 0.2
                              ).to(tensors[SD2_V_KEY].dtype)
    text = _random_state_dict(_Prefixed(text), seed + 1)
    # Forge's own conversion back to the original (ldm / sgm, open_clip) layout, what its save_checkpoint writes
    tensors.update({k: v.to(torch.float16) if v.is_floating_point() else v
                    for k, v in getattr(model_list, kind).process_clip_state_dict_for_saving(None, text).items()})
    guess = huggingface_guess.guess(tensors)
    assert type(guess).__name__ == guessed, type(guess)
    assert (guess.model_type(tensors, "model.diffusion_model.").name == "V_PREDICTION") == (family == "sd2_v")
    _save(tensors, out)


class _Prefixed:
    def __init__(self, parts):
        self.parts = parts

    def state_dict(self):
        return {p + k: v for p, m in self.parts.items() for k, v in m.state_dict().items()}


def lora(ckpt: str, out: str, seed: int, rank: int = 4) -> None:
    if os.path.exists(out):
        return
    import torch
    from safetensors import safe_open

    sys.path.insert(0, HERE)
    from a1111_setup import _save

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    prefix = "model.diffusion_model."
    with safe_open(ckpt, "pt") as f:
        for k in f.keys():
            if not (k.startswith(prefix) and ".attn2.to_" in k and k.endswith(".weight")) or ".to_out." in k:
                continue
            rows, cols = f.get_slice(k).get_shape()
            name = "lora_unet_" + k[len(prefix):-len(".weight")].replace(".", "_")
            tensors[name + ".lora_down.weight"] = (torch.randn(rank, cols, generator=g) / cols ** 0.5).half()
            tensors[name + ".lora_up.weight"] = torch.randn(rows, rank, generator=g).half()
            tensors[name + ".alpha"] = torch.tensor(float(rank)).half()
    assert tensors, f"no cross-attention projections in {ckpt}"
    _save(tensors, out)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for family in FAMILIES:
        a = sub.add_parser(f"{family}-checkpoint")
        a.add_argument("forge")
        a.add_argument("out")
        a.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("lora")
    b.add_argument("ckpt")
    b.add_argument("out")
    b.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.cmd.endswith("-checkpoint"):
        checkpoint(args.cmd[: -len("-checkpoint")], args.forge, args.out, args.seed)
    else:
        lora(args.ckpt, args.out, args.seed)
    print(args.out)


if __name__ == "__main__":
    main()
