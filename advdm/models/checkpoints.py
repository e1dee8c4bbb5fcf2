"""Load a model for the command line, offline: a single-file checkpoint (SD1.x, SD2.x,
SDXL) with the component configs shipped in configs/, a diffusers folder, or a builtin
tiny model. Nothing is looked up on a model hub."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from . import builtin
from .diffusers_model import Conditioning, flow_model, unet_model
from .interface import DiffusionModel, TextRoute, single_token
from ..settings import DEFAULT_PROMPT  # one default prompt for every entry point

CONFIGS = Path(__file__).parent / "configs"
# CLIP BPE ids of the prompts usable without tokenizer files (single-file checkpoints).
KNOWN_PROMPTS = {"a painting": [320, 3086], "a painting in the style of sks": [320, 3086, 530, 518, 1844, 539, 48136],
                 "": []}
# ... and of the words textual inversion learns and starts from (one token each; SD2's OpenCLIP shares the vocabulary).
KNOWN_WORDS = {"sks": 48136, "painting": 3086, "art": 794}
BOS, EOS = 49406, 49407

# A key that only each family's single-file checkpoint has.
FAMILY_KEYS = {
    "sdxl": "conditioner.embedders.1.model.ln_final.weight",
    "sd2": "cond_stage_model.model.ln_final.weight",
    "sd1": "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    "sd3": "model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight",
    "flux": "double_blocks.0.img_attn.qkv.weight",
}


FLOW_PIPELINES = ("StableDiffusion3", "Flux")


class CheckpointError(ValueError):
    pass


@dataclass
class TextEncoder:
    model: torch.nn.Module
    tokenizer: object = None  # transformers tokenizer, or None for the built-in prompt ids
    pad_id: int = EOS
    penultimate: bool = False  # SDXL takes the penultimate layer's hidden states


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("--device cuda: no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CheckpointError("--device mps: MPS is not available")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The denoiser's dtype; the VAE always runs in float32 (fp16 VAE gradients underflow)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_model(
    spec: str,
    device: torch.device,
    dtype: torch.dtype,
    prompt: str = DEFAULT_PROMPT,
    prediction: Optional[str] = None,
    keep_text: bool = False,
) -> DiffusionModel:
    """keep_text: keep the text encoders (on the CPU until used) for a textual-inversion
    mimic (model.text); otherwise they are freed once the prompt is encoded."""
    if spec.startswith("builtin:"):
        return builtin.build(spec.split(":", 1)[1], device, dtype)
    path = Path(spec).expanduser()
    if path.is_dir() and _pipeline_name(path).startswith(FLOW_PIPELINES):
        return _load_flow_folder(path, device, dtype, prompt)
    if path.is_dir():
        family, parts = _load_diffusers_folder(path, dtype)
    elif path.is_file():
        family, parts = _load_single_file(path, dtype)
    else:
        raise CheckpointError(f"{spec}: no such checkpoint file or folder")
    unet, vae, encoders, alphas_cumprod, native_prediction = parts
    if prediction is None:
        prediction = native_prediction
    unet.to(device).eval().requires_grad_(False)
    vae.to(device, torch.float32).eval().requires_grad_(False)
    with torch.no_grad():
        cond = encode_prompt(encoders, prompt, device, spec)

    def build(conditioning):
        return unet_model(unet, vae, conditioning, alphas_cumprod, prediction, vae.config.scaling_factor, name=path.name)

    model = build(cond)
    if keep_text:
        model.text = text_route(encoders, build, device, spec)
    return model  # without keep_text the text encoders are freed here, before the attack


def text_route(encoders, build, device, source: str) -> TextRoute:
    """The route a textual-inversion mimic takes through the loaded text encoders."""
    for enc in encoders:
        enc.model.eval().requires_grad_(False)

    def ids(word: str):
        out = []
        for enc in encoders:
            if enc.tokenizer is not None:
                found = enc.tokenizer(word, add_special_tokens=False).input_ids
            elif word in KNOWN_WORDS:
                found = [KNOWN_WORDS[word]]
            else:
                raise ValueError(f"{source}: the word {word!r} needs CLIP tokenizer files, which a single-file "
                                 f"checkpoint lacks; use a diffusers folder, or one of {sorted(KNOWN_WORDS)}")
            out.append(single_token(word, found, source))
        return out

    def prompted(prompt: str) -> DiffusionModel:
        return build(encode_prompt(encoders, prompt, device, source, offload=False))

    return TextRoute([enc.model.get_input_embeddings() for enc in encoders], ids, prompted,
                     [enc.model for enc in encoders])


def detect_family(state_dict) -> str:
    for family, key in FAMILY_KEYS.items():
        if key in state_dict or f"model.diffusion_model.{key}" in state_dict:
            return family
    if "cond_stage_model.transformer.final_layer_norm.weight" in state_dict:
        return "sd1"
    raise CheckpointError("not a Stable Diffusion checkpoint this tool recognises (SD1.x, SD2.x or SDXL)")


def _read_state_dict(path: Path) -> dict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return _unwrap(torch.load(str(path), map_location="cpu", weights_only=True))
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt or foreign files: one line, not a traceback
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None


def _unwrap(obj):
    return obj.get("state_dict", obj) if isinstance(obj, dict) else obj


def _load_single_file(path: Path, dtype: torch.dtype):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    sd = _read_state_dict(path)
    try:
        family = detect_family(sd)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if family in ("sd3", "flux"):
        raise CheckpointError(f"{path}: {family} single-file checkpoints are not supported yet; "
                              "use its diffusers folder (with text encoders)")
    config = str(CONFIGS / family)
    common = dict(config=config, local_files_only=True)
    unet = UNet2DConditionModel.from_single_file(sd, subfolder="unet", torch_dtype=dtype, **common)
    vae = AutoencoderKL.from_single_file(sd, subfolder="vae", torch_dtype=torch.float32, **common)
    if family == "sdxl":
        encoders = [
            TextEncoder(create_diffusers_clip_model_from_ldm(CLIPTextModel, sd, subfolder="text_encoder", **common), penultimate=True),
            TextEncoder(create_diffusers_clip_model_from_ldm(CLIPTextModelWithProjection, sd, subfolder="text_encoder_2", **common), pad_id=0, penultimate=True),
        ]
    else:
        te = create_diffusers_clip_model_from_ldm(CLIPTextModel, sd, subfolder="text_encoder", **common)
        encoders = [TextEncoder(te, pad_id=0 if family == "sd2" else EOS)]
    scheduler = DDPMScheduler.from_pretrained(config, subfolder="scheduler", local_files_only=True)
    del sd
    prediction = "v" if scheduler.config.prediction_type == "v_prediction" else "eps"
    return family, (unet, vae, encoders, scheduler.alphas_cumprod, prediction)


def _pipeline_name(path: Path) -> str:
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise CheckpointError(f"{path}: not a diffusers model folder (no model_index.json)")
    return json.loads(index_file.read_text()).get("_class_name", "")


def _load_flow_folder(path: Path, device, dtype, prompt: str) -> DiffusionModel:
    """SD3 / Flux diffusers folders: the pipeline's own prompt encoding (CLIP-L, CLIP-G and
    T5 for SD3; CLIP-L pooled and T5 for Flux), computed once, then the encoders are freed."""
    from diffusers import DiffusionPipeline

    index = json.loads((path / "model_index.json").read_text())
    absent = {k: None for k, v in index.items() if v == [None, None]}  # e.g. SD3 without T5
    pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=dtype, local_files_only=True, **absent)
    with torch.no_grad():
        if type(pipe).__name__.startswith("StableDiffusion3"):
            context, _, pooled, _ = pipe.encode_prompt(prompt, None, None, device="cpu", do_classifier_free_guidance=False)
        else:
            context, pooled, _ = pipe.encode_prompt(prompt, None, device="cpu")
    transformer = pipe.transformer.to(device).eval().requires_grad_(False)
    vae = pipe.vae.to(device, torch.float32).eval().requires_grad_(False)
    shift = pipe.scheduler.config.get("shift", 1.0)
    cond = Conditioning(context=context.float(), pooled=pooled.float())
    return flow_model(transformer, vae, cond, vae.config.scaling_factor, vae.config.shift_factor or 0.0,
                      flow_shift=shift, name=path.name)


def _load_diffusers_folder(path: Path, dtype: torch.dtype):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    pipeline = _pipeline_name(path)
    if not pipeline.startswith("StableDiffusion"):
        raise CheckpointError(f"{path}: unsupported pipeline {pipeline!r} (SD1.x, SD2.x, SDXL, SD3 and Flux are)")
    opts = dict(local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype, **opts)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32, **opts)

    def tokenizer(sub):
        return CLIPTokenizer.from_pretrained(path, subfolder=sub, **opts) if (path / sub).is_dir() else None

    if "XL" in pipeline:
        encoders = [
            TextEncoder(CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **opts), tokenizer("tokenizer"), penultimate=True),
            TextEncoder(CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", **opts), tokenizer("tokenizer_2"), pad_id=0, penultimate=True),
        ]
    else:
        te = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **opts)
        encoders = [TextEncoder(te, tokenizer("tokenizer"), pad_id=0 if te.config.hidden_size == 1024 else EOS)]
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **opts)
    prediction = "v" if scheduler.config.prediction_type == "v_prediction" else "eps"
    return pipeline, (unet, vae, encoders, scheduler.alphas_cumprod, prediction)


def token_ids(encoder: TextEncoder, prompt: str, source: str) -> torch.Tensor:
    length = encoder.model.config.max_position_embeddings
    if encoder.tokenizer is not None:
        ids = encoder.tokenizer(prompt, padding="max_length", max_length=length, truncation=True).input_ids
        return torch.tensor([ids])
    if prompt not in KNOWN_PROMPTS:
        raise CheckpointError(
            f"{source}: --prompt {prompt!r} needs CLIP tokenizer files, which a single-file checkpoint "
            f"lacks; use a diffusers folder, or one of the built-in prompts {sorted(KNOWN_PROMPTS)}"
        )
    ids = [BOS, *KNOWN_PROMPTS[prompt], EOS]
    return torch.tensor([ids + [encoder.pad_id] * (length - len(ids))])


def encode_prompt(encoders, prompt: str, device, source: str, offload: bool = True) -> Conditioning:
    """SD1/SD2: the last hidden states; SDXL: both encoders' penultimate hidden states
    concatenated, plus the second encoder's pooled projection. offload: back to the CPU after."""
    contexts, pooled = [], None
    for enc in encoders:
        enc.model.to(device)
        out = enc.model(token_ids(enc, prompt, source).to(device), output_hidden_states=enc.penultimate)
        contexts.append(out.hidden_states[-2] if enc.penultimate else out.last_hidden_state)
        if hasattr(out, "text_embeds"):
            pooled = out.text_embeds
        if offload:
            enc.model.to("cpu")
    return Conditioning(context=torch.cat(contexts, dim=-1).float(), pooled=pooled.float() if pooled is not None else None)
