"""Write random-weight, seeded checkpoints for ComfyUI integration tests.

    python tests/integration/comfy_checkpoint.py OUT.safetensors [--family sd15] [--seed 0]

Families: sd15 (full SD1.5 shapes, ~2 GB); and reduced-size checkpoints in the original key
layouts that ComfyUI's model detection still classifies as the real family (it reads
channel counts and block depths from the keys, see comfy/model_detection.py):
  sdxl       SDXL UNet (model_channels 320, context 2048, adm 2816, input transformer depths
             [0,0,2,2,10,10] -> supported_models.SDXL, EPS) with channel_mult [1,1,1] and
             shallow output blocks; SDXL VAE; no text encoders (~240M parameters, 490 MB);
  sdxl_edm   the same plus edm_mean/edm_std keys: ComfyUI takes it for Playground v2.5,
             an EDM model (the unsupported-model test);
  flux       Flux.1-dev layout (guidance_in, vector_in 768) with hidden size 128 (one head of
             the real 16/56/56 RoPE axes), one double and one single block, a 64-wide
             txt_in, and a 16-channel Flux-shaped VAE (~85M parameters, 170 MB);
  sd2, sd2_v SD2 UNet (model_channels 320, context 1024, linear transformer projections
             -> supported_models.SD20) with channel_mult [1,1,1,1] and the SD VAE (~200M
             parameters); sd2 also carries the full-size OpenCLIP ViT-H text tower in its
             original layout (ComfyUI's SD2 CLIP has a fixed size; +354M, 0.7 GB). ComfyUI
             takes SD2 for v-prediction when the spread of SD2_V_KEY's norm bias exceeds 0.09
             (the 768-v checkpoint's does): sd2_v sets it at std 0.2, sd2 leaves it 0 (eps);
  sd3        SD3-medium layout (MMDiT: x_embedder 16 -> 2x2 patches, context_embedder 4096,
             y_embedder 2048, pos_embed 192x192) with depth 2 (detection reads the hidden
             size as 64 x depth: hidden 128, two heads, two joint blocks, the last one
             context pre-only), no qk norm and no x-block self-attention
             -> supported_models.SD3 (FLOW, shift 3); the 16-channel SD3 VAE (no quant_conv)
             under first_stage_model. (~90M parameters, 180 MB).

Run it with ComfyUI's interpreter and ComfyUI on the path (COMFYUI_DIR): the tensor shapes
come from ComfyUI's own model classes, built on the meta device (no memory), and the file
uses the original (ldm / CompVis) key layout that CheckpointLoaderSimple detects as
SD1.5 / EPS (model_channels 320, context_dim 768). Weights are fp16, about 2 GB. Nothing
here is ComfyUI code; ComfyUI is only imported at run time.

The weights are random (fan-in scaled normal, norms at 1, biases at 0), so the model
generates noise; it exercises the machinery only. An existing file is left alone.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys


def _comfy_on_path() -> None:
    d = os.environ.get("COMFYUI_DIR")
    if d and d not in sys.path:
        sys.path.insert(0, d)


# The SD1.5 "v1-inference.yaml" UNet / first stage settings.
SD15_UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320,
    attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=[1, 2, 4, 4],
    num_heads=8, use_spatial_transformer=True, transformer_depth=1, context_dim=768,
    use_checkpoint=False, legacy=False, use_linear_in_transformer=False,
    adm_in_channels=None, use_temporal_attention=False,
)
SD15_VAE = dict(
    double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128,
    ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0,
)


# Reduced SDXL: what detection needs to classify it as supported_models.SDXL (see docstring).
SDXL_TINY_UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
    channel_mult=[1, 1, 1], transformer_depth=[0, 0, 2, 2, 10, 10],
    transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1], transformer_depth_middle=1,
    num_heads=-1, num_head_channels=64, use_spatial_transformer=True, context_dim=2048,
    use_checkpoint=False, legacy=False, use_linear_in_transformer=True, adm_in_channels=2816,
    num_classes="sequential", use_temporal_attention=False, use_temporal_resblock=False,
)
# Reduced SD2 (v2-inference.yaml with 320 channels at every level): SD20's detection keys kept.
SD2_TINY_UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
    num_res_blocks=2, channel_mult=[1, 1, 1, 1], num_heads=-1, num_head_channels=64,
    use_spatial_transformer=True, transformer_depth=1, context_dim=1024, use_checkpoint=False,
    legacy=False, use_linear_in_transformer=True, adm_in_channels=None, use_temporal_attention=False,
)
SD2_V_KEY = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"  # read by SD20.model_type
FLUX_TINY = dict(
    image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=64,
    hidden_size=128, mlp_ratio=4.0, num_heads=1, depth=1, depth_single_blocks=1,
    axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True,
    txt_ids_dims=[],
)
# Reduced SD3 (medium): the MMDiT config model_detection derives from the keys below.
SD3_TINY = dict(
    in_channels=16, out_channels=16, patch_size=2, depth=2, input_size=None, adm_in_channels=2048,
    context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128}},
    num_patches=192 * 192, pos_embed_max_size=192, pos_embed_scaling_factor=None,
    x_block_self_attn_layers=[],
)
FAMILIES = ("sd15", "sd2", "sd2_v", "sdxl", "sdxl_edm", "flux", "sd3")


def shapes(family: str = "sd15") -> dict[str, tuple]:
    """Key -> shape of every tensor of the family's checkpoint, in its original layout."""
    if family != "sd15":
        return _reduced_shapes(family)
    _comfy_on_path()
    import torch
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported: no CUDA probing
    import comfy.ops
    from comfy import model_detection
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.ldm.models.autoencoder import AutoencoderKL
    import comfy.clip_model

    ops = comfy.ops.disable_weight_init
    meta = torch.device("meta")
    out: dict[str, tuple] = {}
    unet = UNetModel(**model_detection.convert_config(dict(SD15_UNET)), device=meta, operations=ops)
    out.update({"model.diffusion_model." + k: tuple(v.shape) for k, v in unet.state_dict().items()})
    with torch.device(meta):
        vae = AutoencoderKL(ddconfig=dict(SD15_VAE), embed_dim=4)
    out.update({"first_stage_model." + k: tuple(v.shape) for k, v in vae.state_dict().items()})
    cfg_path = os.path.join(os.path.dirname(comfy.clip_model.__file__), "sd1_clip_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    clip = comfy.clip_model.CLIPTextModel(cfg, torch.float32, meta, ops)
    for k, v in clip.state_dict().items():
        if k.startswith("text_projection") or "logit_scale" in k:
            continue
        out["cond_stage_model.transformer." + k] = tuple(v.shape)
    return out


def _vae16_shapes(prefix: str, engine, meta) -> dict[str, tuple]:
    """A 16-channel (SD3 / Flux) VAE's key shapes, under prefix."""
    import torch

    ddconfig = dict(SD15_VAE, z_channels=16)
    with torch.device(meta):
        vae = engine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
            decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": ddconfig})
    return {prefix + k: tuple(v.shape) for k, v in vae.state_dict().items()}


def _openclip_text_shapes(prefix: str) -> dict[str, tuple]:
    """OpenCLIP's text tower in its own key layout, sized by ComfyUI's SD2 CLIP config."""
    import comfy.text_encoders.sd2_clip

    with open(os.path.join(os.path.dirname(comfy.text_encoders.sd2_clip.__file__), "sd2_clip_config.json")) as f:
        cfg = json.load(f)
    width, wide, tokens = cfg["hidden_size"], cfg["intermediate_size"], cfg["max_position_embeddings"]
    out = {"token_embedding.weight": (cfg["vocab_size"], width), "positional_embedding": (tokens, width),
           "ln_final.weight": (width,), "ln_final.bias": (width,), "text_projection": (width, cfg["projection_dim"]),
           "logit_scale": ()}
    for i in range(cfg["num_hidden_layers"]):
        block = f"transformer.resblocks.{i}."
        out.update({block + "ln_1.weight": (width,), block + "ln_1.bias": (width,),
                    block + "attn.in_proj_weight": (3 * width, width), block + "attn.in_proj_bias": (3 * width,),
                    block + "attn.out_proj.weight": (width, width), block + "attn.out_proj.bias": (width,),
                    block + "ln_2.weight": (width,), block + "ln_2.bias": (width,),
                    block + "mlp.c_fc.weight": (wide, width), block + "mlp.c_fc.bias": (wide,),
                    block + "mlp.c_proj.weight": (width, wide), block + "mlp.c_proj.bias": (width,)})
    return {prefix + k: v for k, v in out.items()}


def _reduced_shapes(family: str) -> dict[str, tuple]:
    _comfy_on_path()
    import torch
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.ops
    from comfy.ldm.models.autoencoder import AutoencoderKL, AutoencodingEngine

    ops = comfy.ops.disable_weight_init
    meta = torch.device("meta")
    out: dict[str, tuple] = {}
    if family in ("sdxl", "sdxl_edm", "sd2", "sd2_v"):
        from comfy import model_detection
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

        config = dict(SDXL_TINY_UNET) if family.startswith("sdxl") else model_detection.convert_config(dict(SD2_TINY_UNET))
        unet = UNetModel(**config, device=meta, operations=ops)
        out.update({"model.diffusion_model." + k: tuple(v.shape) for k, v in unet.state_dict().items()})
        with torch.device(meta):
            vae = AutoencoderKL(ddconfig=dict(SD15_VAE), embed_dim=4)
        out.update({"first_stage_model." + k: tuple(v.shape) for k, v in vae.state_dict().items()})
        if family == "sd2":
            out.update(_openclip_text_shapes("cond_stage_model.model."))
        if family == "sdxl_edm":
            out["edm_mean"] = (1, 4, 1, 1)
            out["edm_std"] = (1, 4, 1, 1)
    elif family == "flux":
        from comfy.ldm.flux.model import Flux

        dit = Flux(**dict(FLUX_TINY), device=meta, operations=ops, dtype=torch.float32)
        out.update({"model.diffusion_model." + k: tuple(v.shape) for k, v in dit.state_dict().items()})
        out.update(_vae16_shapes("vae.", AutoencodingEngine, meta))
    elif family == "sd3":
        from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

        cfg = json.loads(json.dumps(SD3_TINY))
        assert cfg["context_embedder_config"]["params"]["out_features"] == 64 * cfg["depth"]
        dit = MMDiT(**cfg, device=meta, operations=ops, dtype=torch.float32)
        out.update({"model.diffusion_model." + k: tuple(v.shape) for k, v in dit.state_dict().items()})
        out.update(_vae16_shapes("first_stage_model.", AutoencodingEngine, meta))
    else:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    return out


def random_tensor(key: str, shape: tuple, gen, family: str = "sd15"):
    import torch

    if family == "sd2_v" and key == SD2_V_KEY:
        return torch.randn(shape, generator=gen) * 0.2
    if key in ("edm_mean", "edm_std"):
        return torch.zeros(shape) if key == "edm_mean" else torch.ones(shape)
    if key.endswith("position_ids"):
        return torch.arange(shape[-1]).view(shape).float()
    if key.endswith("bias") or len(shape) == 0:
        return torch.zeros(shape)
    if len(shape) == 1:  # norm scales
        return torch.ones(shape)
    if "embedding" in key:
        return torch.randn(shape, generator=gen) * 0.02
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def write(path: str, seed: int = 0, family: str = "sd15") -> str:
    if os.path.exists(path):
        print(f"{path} exists, left alone")
        return path
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in sorted(shapes(family).items()):
        t = random_tensor(key, shape, gen, family)
        sd[key] = t.to(torch.int64) if key.endswith("position_ids") else t.to(torch.float16)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".partial"
    save_file(sd, tmp, metadata={"note": f"random weights, seed {seed}, {family} shapes; for tests only"})
    os.replace(tmp, path)
    n = sum(t.numel() for t in sd.values())
    print(f"wrote {path}: {len(sd)} tensors, {n / 1e6:.0f}M parameters")
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--family", choices=FAMILIES, default="sd15")
    a = ap.parse_args()
    write(a.out, a.seed, a.family)
