"""Forge 2.x's loaded model (a ForgeDiffusionEngine with its forge_objects) as an
advdm.DiffusionModel. Forge's `backend` is imported only inside the functions that switch its
globals, so the checks here are unit-tested against Forge's real backend classes without the web UI.

What it relies on (Forge main dfdcbab6, see the project notes):
- `sd_model.forge_objects_after_applying_lora` holds the UNet / CLIP / VAE patchers of the
  last generation's LoRAs (without script patches such as ControlNet); all share one KModel;
- `KModel.apply_model(x, sigma, c_crossattn=..., y=..., guidance=..., transformer_options=...)`
  takes the variance-exploding x and sigma and returns the denoised latent; the schedule is
  `KModel.predictor` (`prediction_type` epsilon | v_prediction | const | edm, `sigmas`;
  SD3's PredictionDiscreteFlow has `shift`, Flux's PredictionFlux `mu`, shift = e^mu);
- `get_learned_conditioning` returns inference tensors: a tensor (SD1/SD2) or a dict
  {crossattn, vector[, guidance]} (SDXL, SD3, Flux), mapped to c_crossattn / y / guidance;
- the VAE's `encode` returns an unseeded sample under inference mode; the differentiable path
  is `encoder` + `quant_conv` (None for SD3 / Flux), then (z - shift_factor) * scaling_factor;
- weights are inference tensors after every load, move and LoRA merge; the UNet's
  `x += n` residuals, the CPU's default sub-quadratic attention (no backward) and the async
  swap streams must be switched for the attack.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from typing import Any, Callable, Dict, Iterator, List

import torch
from torch import Tensor

from advdm import DiffusionModel
from advdm.models.host_tensors import AugmentedAssignOutOfPlace, frozen, make_trainable_copies, ordinary
from advdm_webui.ldm_model import BatchedCond, Conditioning, UnsupportedModel, _encoder, _module_dtype
from advdm_webui.text_route import TextModel, route, token_table

FAMILIES = {"StableDiffusion": "SD1.x", "StableDiffusion2": "SD2.x", "StableDiffusionXL": "SDXL",
            "StableDiffusion3": "SD3", "Flux": "Flux"}
SUPPORTED_TEXT = "SD1.x, SD2.x (eps and v), SDXL, SD3 and Flux"
REFUSED = {
    "StableDiffusionXLRefiner": "SDXL refiner checkpoints are not supported (they only refine: protect with the base model)",
    "Chroma": "Chroma models are not supported yet",
}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "const": "flow"}
TRAIN_RESOLUTION = {"SD1.x": 512, "SD2.x": 512, "SDXL": 1024, "SD3": 1024, "Flux": 1024}
# The engines' text-processing engines (backend/text_processing/classic_engine.py), by attribute.
TEXT_ENGINES = ("text_processing_engine", "text_processing_engine_l", "text_processing_engine_g")
TEXT_FAMILIES = ("SD1.x", "SD2.x", "SDXL")
# Module globals Forge binds its attention function to at import (backend/attention.py picks it).
ATTENTION_USERS = ("backend.attention", "backend.nn.unet", "backend.nn.flux", "backend.nn.chroma")


def family(sd_model: Any) -> str:
    """The family name, or UnsupportedModel with a one-line reason."""
    name = type(sd_model).__name__
    if name in REFUSED:
        raise UnsupportedModel(f"{REFUSED[name]}; supported: {SUPPORTED_TEXT}")
    if name not in FAMILIES or getattr(sd_model, "forge_objects_after_applying_lora", None) is None:
        raise UnsupportedModel(f"Forge {name} models are not supported; supported: {SUPPORTED_TEXT}")
    if getattr(sd_model, "is_inpaint", False):
        raise UnsupportedModel("inpainting checkpoints are not supported (their UNet also takes a mask and a "
                               "masked image): protect with the base model of the family")
    return FAMILIES[name]


def prediction(sd_model: Any) -> str:
    """'eps' | 'v' | 'flow' from the KModel's predictor, after refusing what cannot run."""
    fam = family(sd_model)
    objects = sd_model.forge_objects_after_applying_lora
    kind = getattr(objects.unet.model.predictor, "prediction_type", None)
    if kind not in PREDICTIONS:
        raise UnsupportedModel(f"models with {kind!r} prediction are not supported yet (only eps, v and flow)")
    pred = PREDICTIONS[kind]
    if (fam in ("SD3", "Flux")) != (pred == "flow"):
        raise UnsupportedModel(f"{fam} models with {kind} prediction are not supported")
    if objects.unet.has_online_lora():
        raise UnsupportedModel("LoRAs applied 'online' (over fp8 / nf4 / gguf weights) are merged inside every "
                               "forward pass under inference mode, which has no backward: generate once without "
                               "the LoRA, or with an fp16 / bf16 / fp32 checkpoint")
    return pred


def flow_shift(predictor: Any) -> float:
    """The shift alpha of sigma = alpha t / (1 + (alpha - 1) t): Flux's PredictionFlux stores
    mu with sigma = e^mu / (e^mu + 1/t - 1), the same curve with alpha = e^mu."""
    mu = getattr(predictor, "mu", None)
    if mu is not None:
        return math.exp(float(mu))
    return float(getattr(predictor, "shift", 1.0))


def learned_conditioning(sd_model: Any, prompt: str, width: int, height: int) -> Any:
    """The prompt's conditioning as ordinary tensors (Forge returns inference tensors)."""
    c = sd_model.get_learned_conditioning(Conditioning([prompt], width, height))
    return ordinary(c)


def model_conds(cond: Any) -> Dict[str, Tensor]:
    """get_learned_conditioning's result -> apply_model keyword arguments (as Forge's
    backend/sampling/condition.py maps them)."""
    if isinstance(cond, Tensor):
        return {"c_crossattn": cond}
    out = {"c_crossattn": cond["crossattn"], "y": cond["vector"]}
    if "guidance" in cond:
        out["guidance"] = cond["guidance"]
    return out


def downsample_multiple(unet: Any) -> int:
    """Latent sides must divide by 2**(number of UNet downsamplings): Forge's UNet concatenates
    skip connections without resizing."""
    return 2 ** sum(1 for m in unet.modules() if type(m).__name__ == "Downsample")


def _module_device(m: torch.nn.Module) -> torch.device:
    return next((p.device for p in m.parameters()), torch.device("cpu"))


def denoiser(sd_model: Any, cond: Any) -> Callable[[Tensor, Tensor], Tensor]:
    """D(x, sigma) of the KModel with this conditioning (its graph kept: a learned word's)."""
    unet = sd_model.forge_objects_after_applying_lora.unet
    kmodel = unet.model
    device = _module_device(kmodel)
    conds = BatchedCond({k: v.to(device) for k, v in model_conds(cond).items()})
    transformer_options = dict(unet.model_options.get("transformer_options", {}))

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        sigma = sigma.to(device, torch.float32).reshape(-1)
        if sigma.numel() == 1 and x.shape[0] > 1:
            sigma = sigma.expand(x.shape[0])
        return kmodel.apply_model(x.to(device), sigma, transformer_options=transformer_options,
                                  **conds(x.shape[0])).float()

    return denoise


def build(sd_model: Any, cond: Any, *, name: str = "Forge") -> DiffusionModel:
    """A DiffusionModel over the loaded model. Use inside attack_mode(sd_model)."""
    pred = prediction(sd_model)
    fam = family(sd_model)
    objects = sd_model.forge_objects_after_applying_lora
    unet, vae = objects.unet, objects.vae
    kmodel, fsm = unet.model, vae.first_stage_model
    device = _module_device(kmodel)
    scale, shift = float(fsm.scaling_factor), float(fsm.shift_factor or 0.0)

    def decode(latent: Tensor) -> Tensor:
        with torch.no_grad():
            pixels = vae.decode(fsm.process_out(latent.to(device)))  # NHWC in [0, 1]
        return pixels.movedim(-1, 1).float().clone()

    flow = pred == "flow"
    return DiffusionModel(
        encode=_encoder(fsm, scale, shift, None, False), denoise=denoiser(sd_model, cond), decode=decode,
        prediction=pred,
        sigmas=None if flow else kmodel.predictor.sigmas.detach().float().cpu().clone(),
        flow_shift=flow_shift(kmodel.predictor) if flow else 1.0, flow_logit_normal=flow,
        pixel_multiple=16 if flow else 8 * downsample_multiple(kmodel.diffusion_model),
        train_resolution=768 if fam == "SD2.x" and pred == "v" else TRAIN_RESOLUTION[fam],
        latent_channels=int(vae.latent_channels), name=f"{name} {fam}{' v' if pred == 'v' else ''}",
        device=torch.device(device), dtype=torch.float32,
        denoiser_network=getattr(kmodel, "diffusion_model", None),
    )


@contextlib.contextmanager
def _switched(module_names, attribute: str, value: Any) -> Iterator[None]:
    """module.attribute = value in each of these modules that is imported (one that is not has
    not bound anything yet), for the duration; restored after."""
    import sys

    saved = [(m, getattr(m, attribute)) for m in map(sys.modules.get, module_names)
             if m is not None and hasattr(m, attribute)]
    for m, _ in saved:
        setattr(m, attribute, value)
    try:
        yield
    finally:
        for m, old in saved:
            setattr(m, attribute, old)


@contextlib.contextmanager
def backward_safe_backend() -> Iterator[None]:
    """PyTorch SDPA attention (Forge picks sub-quadratic attention on the CPU, whose chunked path
    has no backward, and binds it by name in each network module), and no async swap streams."""
    from backend import attention, stream

    with contextlib.ExitStack() as stack:
        stack.enter_context(_switched(ATTENTION_USERS, "attention_function", attention.attention_pytorch))
        stack.enter_context(_switched(("backend.nn.vae",), "attention_function_single_head_spatial",
                                      attention.pytorch_attention_single_head_spatial))
        stack.enter_context(_switched(("backend.stream",), "stream_activated", False))
        if stream.current_stream is not None:
            stream.current_stream.synchronize()
        yield


def text_models(sd_model: Any) -> List[TextModel]:
    """The engine's CLIP text-processing engines (SD1.x: clip_l, SD2.x: clip_h, SDXL: clip_l and
    clip_g); a refusal naming the family elsewhere (SD3, Flux: their T5 encoder has no route)."""
    fam = family(sd_model)
    engines = [getattr(sd_model, n) for n in TEXT_ENGINES if getattr(sd_model, n, None) is not None]
    if fam not in TEXT_FAMILIES or not engines:
        raise ValueError(f"textual inversion on Forge {fam} models is not supported (only {', '.join(TEXT_FAMILIES)}); "
                         "use the LoRA mimic")
    return [TextModel(e.tokenize, token_table(e.text_encoder.transformer.text_model.embeddings.token_embedding),
                      e.text_encoder, getattr(e, "embeddings", None)) for e in engines]


def conditioning(sd_model: Any, prompt: str, width: int, height: int) -> Any:
    """The prompt's conditioning through the last generation's (LoRA-patched) CLIP, as Forge's
    get_learned_conditioning computes it but with gradients: Forge decorates it with
    @torch.inference_mode(), so its body is called (`__wrapped__`)."""
    method = type(sd_model).get_learned_conditioning
    body = getattr(method, "__wrapped__", method)
    with after_lora(sd_model):
        return ordinary(body(sd_model, Conditioning([prompt], width, height)), detach=False)


@contextlib.contextmanager
def after_lora(sd_model: Any) -> Iterator[None]:
    """sd_model.forge_objects are the last generation's (its LoRAs applied), for the duration."""
    objects = sd_model.forge_objects
    sd_model.forge_objects = sd_model.forge_objects_after_applying_lora.shallow_copy()
    try:
        yield
    finally:
        sd_model.forge_objects = objects


def load(sd_model: Any, text: bool = False) -> None:
    """Forge loads models lazily and evicts them for others: load the UNet (with the last
    generation's LoRAs merged) and the VAE together, as a generation does; with text, the CLIP
    too (so encoding a prompt evicts nothing)."""
    from backend import memory_management

    objects = sd_model.forge_objects_after_applying_lora
    memory_management.load_models_gpu([objects.unet, objects.vae.patcher] + ([objects.clip.patcher] if text else []))


@contextlib.contextmanager
def attack_mode(sd_model: Any, *, vae_fp32: bool = True, text: bool = False) -> Iterator[None]:
    """Outside inference mode with grad, ordinary copies of the inference weights (same values;
    Forge keeps sampling with them), every parameter frozen (flags restored after), the VAE in
    fp32 (cast back after), eval mode, out-of-place residuals, backward-safe attention. With
    text, the CLIP's text encoders alike (a textual-inversion mimic learns through them)."""
    objects = sd_model.forge_objects_after_applying_lora
    kmodel, fsm = objects.unet.model, objects.vae.first_stage_model
    networks = [kmodel, fsm] + ([objects.clip.cond_stage_model] if text else [])
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        make_trainable_copies(networks)
        stack.enter_context(frozen(networks))
        vae_dtype = _module_dtype(fsm)
        if vae_fp32 and vae_dtype != torch.float32:
            fsm.float()
            stack.callback(fsm.to, vae_dtype)
        for m in networks:
            stack.callback(m.train, m.training)
            m.eval()
        stack.enter_context(backward_safe_backend())
        stack.enter_context(AugmentedAssignOutOfPlace())
        yield


@contextlib.contextmanager
def loaded_model(sd_model: Any, prompt: str, width: int, height: int, *, name: str = "Forge",
                 text: bool = False) -> Iterator[DiffusionModel]:
    """The model of the last generation (its LoRAs applied) as a DiffusionModel, for the
    duration; with text, its textual-inversion route. The conditioning is computed first: it
    loads CLIP, which may evict the UNet."""
    prediction(sd_model)
    models = text_models(sd_model) if text else None
    with after_lora(sd_model):
        cond = learned_conditioning(sd_model, prompt, width, height)
    load(sd_model, text)
    with attack_mode(sd_model, text=text):
        model = build(sd_model, cond, name=name)
        if text:
            model = replace(model, text=route(models, lambda p: conditioning(sd_model, p, width, height),
                                              lambda c: denoiser(sd_model, c), model, model.name))
        yield model
