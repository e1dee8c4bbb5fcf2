"""Small seeded random-weight models of each family's real diffusers classes.

They check that an installation works end to end in seconds. Their weights are random:
they protect nothing, and every entry point that uses them says so.
"""
from __future__ import annotations

import torch

from .diffusers_model import Conditioning, flow_model, unet_model
from .interface import DiffusionModel

WARNING = "builtin tiny model: random weights, for smoke tests only; it protects nothing"
BUILTINS = ("tiny", "tiny-sd2v", "tiny-sdxl", "tiny-sd3", "tiny-flux")
CONTEXT_TOKENS = 8
# Scales that give the tiny VAEs' latents about unit variance, as SD's scale factors do.
TINY_SCALE = {4: 2.7, 16: 4.8}


def scaled_linear_alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    """The SD1/SD2/SDXL training schedule (beta 0.00085 .. 0.012, scaled linear)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def _tiny_vae(latent_channels: int = 4):
    from diffusers import AutoencoderKL

    # 8x downsampling like SD's VAE, so latents (and attention) are as small as SD's
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=16,
    )
    # A trained VAE's posterior is nearly deterministic (std ~1e-3 of the mean's spread);
    # random weights give std ~1, which would drown the image in encoder noise.
    with torch.no_grad():
        vae.quant_conv.weight[latent_channels:] = 0
        vae.quant_conv.bias[latent_channels:] = -12.0
    return vae


def _tiny_unet(sdxl: bool = False):
    from diffusers import UNet2DConditionModel

    extra = {}
    if sdxl:
        extra = dict(addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
        sample_size=16,
        **extra,
    )


def tiny_parts(name: str, seed: int = 0):
    """(denoising network, VAE, conditioning) of builtin:<name>, seeded, float32 on the CPU."""
    if name not in BUILTINS:
        raise ValueError(f"unknown builtin model {name!r}; choose one of {', '.join(BUILTINS)}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    cond = Conditioning(context=torch.randn(1, CONTEXT_TOKENS, 32, generator=gen))
    if name in ("tiny-sdxl", "tiny-sd3", "tiny-flux"):
        cond.pooled = torch.randn(1, 32, generator=gen)
    if name == "tiny-sd3":
        from diffusers import SD3Transformer2DModel

        net = SD3Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
            caption_projection_dim=32, pooled_projection_dim=32, pos_embed_max_size=64,
        )
    elif name == "tiny-flux":
        from diffusers import FluxTransformer2DModel

        net = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
            guidance_embeds=True, axes_dims_rope=(4, 6, 6),
        )
    else:
        net = _tiny_unet(sdxl=name == "tiny-sdxl")
    vae = _tiny_vae(latent_channels=16 if name in ("tiny-sd3", "tiny-flux") else 4)
    return net.eval().requires_grad_(False), vae.eval().requires_grad_(False), cond


def build(name: str, device="cpu", dtype=torch.float32, seed: int = 0) -> DiffusionModel:
    """builtin:<name> for name in BUILTINS: the denoiser in dtype, the VAE in float32."""
    net, vae, cond = tiny_parts(name, seed)
    net, vae = net.to(device, dtype), vae.to(device)
    if name in ("tiny-sd3", "tiny-flux"):
        return flow_model(net, vae, cond, TINY_SCALE[16], 0.0, flow_shift=3.0, name=f"builtin:{name}",
                          train_resolution=128)
    prediction = "v" if name == "tiny-sd2v" else "eps"
    return unet_model(net, vae, cond, scaled_linear_alphas_cumprod(), prediction, TINY_SCALE[4], name=f"builtin:{name}")
