"""Offline prerequisites for the A1111 integration test; run with the web UI's interpreter.

    python tests/integration/a1111_setup.py hf-cache HF_HOME
        the openai/clip-vit-large-patch14 tokenizer + text-model config in a local Hugging Face
        cache layout, built from open_clip's bpe_simple_vocab_16e6.txt.gz (the same BPE vocab;
        open_clip_torch is one of the web UI's requirements), so HF_HUB_OFFLINE=1 works.
        Also a google/t5-v1_1-xxl tokenizer (a few-token Unigram tokenizer.json: the web UI's SD3
        text conditioning builds a T5 tokenizer even with T5 off; with T5 off its ids are unused).
    python tests/integration/a1111_setup.py checkpoint OUT.safetensors [--seed 0] [--a1111 DIR]
        a random-weight, seeded SD1.5 checkpoint in the original ldm key layout (about 2 GB,
        fp16); shapes come from the web UI's own v1-inference.yaml.
    python tests/integration/a1111_setup.py sdxl-checkpoint OUT.safetensors [--seed 0] [--a1111 DIR]
        a random-weight, seeded, reduced SDXL checkpoint in the original sgm key layout
        (conditioner.embedders.{0,1}, model.diffusion_model, first_stage_model) plus OUT.yaml
        beside it. The web UI builds a checkpoint's model from the .yaml next to it when there
        is one (sd_models_config.find_checkpoint_config_near_filename), so this is
        generative-models' own sd_xl_base.yaml (DiffusionEngine, GeneralConditioner,
        FrozenCLIPEmbedder + FrozenOpenCLIPEmbedder2, EPS DiscreteDenoiser) with smaller
        sizes: UNet model_channels 64, transformer depths [1, 1, 2]; OpenCLIP ViT-B-32 text tower
        (width 512) as the second encoder, so context 768 + 512 and adm 512 + 3 * 512; a 32-wide
        VAE. The real CLIP-L (from the hf-cache config) stays. The web UI detects it as SDXL
        (conditioner present, middle-block attention present: not SSD-1B). About 230M
        parameters (half of them CLIP-L), 460 MB. A full-size SDXL (3.5B parameters, 14 GB in fp32 under --no-half,
        plus the state dict while loading) does not fit beside anything else on a 24 GB machine.
    python tests/integration/a1111_setup.py sd2-checkpoint OUT.safetensors [--seed 0] [--a1111 DIR]
        a random-weight, seeded, reduced SD2.x checkpoint (ldm key layout) plus OUT.yaml beside it:
        the web UI's own v2-inference.yaml (eps, FrozenOpenCLIPEmbedder, penultimate layer) with
        UNet model_channels 64, transformer depth 1, the OpenCLIP ViT-B-32 text tower (width 512,
        so context 512) and a 32-wide VAE. The web UI wraps it as SD2 (is_sd2, its OpenCLIP
        embedder under FrozenOpenCLIPEmbedderWithCustomWords). About 100M parameters, 200 MB.
    python tests/integration/a1111_setup.py sd3-checkpoint OUT.safetensors [--seed 0] [--a1111 DIR]
        a random-weight SD3 checkpoint in the SD3-medium key layout the web UI detects as SD3
        (model.diffusion_model.x_embedder.proj.weight) and builds with its own SD3Inferencer:
        MMDiT with depth 2 (the web UI reads hidden size 64 x depth and the rest from the key
        shapes), the 16-channel SD3 VAE, and the CLIP-L and CLIP-G text encoders included (else
        the web UI downloads them); no T5 (off by default). Shapes come from the web UI's own
        modules/models/sd3 classes built on the meta device. About 0.9B parameters (CLIP-G is
        0.7B), 1.8 GB.

Nothing here is web UI code; its modules are only imported at run time.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys

SNAPSHOT = "0" * 40
CLIP_L_TEXT_CONFIG = {
    "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "attention_dropout": 0.0,
    "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "dropout": 0.0, "hidden_act": "quick_gelu",
    "hidden_size": 768, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "num_attention_heads": 12,
    "num_hidden_layers": 12, "projection_dim": 768, "torch_dtype": "float32", "vocab_size": 49408,
}


def _snapshot_dir(hf_home: str, repo_id: str) -> str:
    """A Hugging Face cache entry for repo_id with one snapshot, its refs/main pointing at it."""
    repo = os.path.join(hf_home, "hub", "models--" + repo_id.replace("/", "--"))
    snap = os.path.join(repo, "snapshots", SNAPSHOT)
    os.makedirs(snap, exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(SNAPSHOT)
    return snap


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def hf_cache(hf_home: str) -> str:
    import open_clip.tokenizer as oct

    path = os.path.join(os.path.dirname(oct.__file__), "bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = bytes_to_unicode()
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    snap = _snapshot_dir(hf_home, "openai/clip-vit-large-patch14")
    with open(os.path.join(snap, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(snap, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    with open(os.path.join(snap, "special_tokens_map.json"), "w") as f:
        json.dump(special, f)
    with open(os.path.join(snap, "tokenizer_config.json"), "w") as f:
        json.dump({**special, "add_prefix_space": False, "do_lower_case": True, "errors": "replace",
                   "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}, f)
    with open(os.path.join(snap, "config.json"), "w") as f:
        json.dump(CLIP_L_TEXT_CONFIG, f)
    return snap


SCHEDULE_KEYS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                 "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                 "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "scale_factor")


def _clip_l_without_download():
    """transformers.CLIPTextModel.from_pretrained builds the CLIP-L text model from its config."""
    import transformers

    real = transformers.CLIPTextModel.from_pretrained
    cfg = {k: v for k, v in CLIP_L_TEXT_CONFIG.items() if k not in ("architectures", "model_type")}
    transformers.CLIPTextModel.from_pretrained = classmethod(lambda cls, name, *a, **k: cls(transformers.CLIPTextConfig(**cfg)))
    return lambda: setattr(transformers.CLIPTextModel, "from_pretrained", real)


FINAL_TEXT_NORM_BIASES = ("final_layer_norm.bias", "ln_final.bias")  # CLIP's, OpenCLIP's


def _random_state_dict(model, seed: int) -> dict:
    """Fan-in scaled normal weights, norms at 1, biases at 0 (the text encoders' final norm's
    small and random), fp16; position ids kept."""
    import torch

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for k, v in model.state_dict().items():
        if k in SCHEDULE_KEYS or k.startswith("denoiser."):
            continue
        if "position_ids" in k:  # real files carry them; without, the web UI leaves them uninitialised
            tensors[k] = torch.arange(v.shape[-1], dtype=torch.int64).reshape(v.shape)
            continue
        if k.endswith(FINAL_TEXT_NORM_BIASES):
            # real text encoders' final LayerNorm has a bias, so the conditioning's mean is not ~0:
            # the web UI's emphasis rescales by that mean, and at ~0 its gradient is not finite
            t = 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("bias") or v.dim() == 0:
            t = torch.zeros(v.shape)
        elif "norm" in k or k.endswith("ln_1.weight") or k.endswith("ln_2.weight") or k.endswith("ln_final.weight"):
            t = torch.ones(v.shape)
        elif v.dim() == 1:
            t = torch.ones(v.shape) if k.endswith("weight") else torch.zeros(v.shape)
        else:
            fan_in = math.prod(v.shape[1:])
            t = torch.randn(v.shape, generator=g) / math.sqrt(fan_in)
        tensors[k] = t.to(torch.float16).contiguous()
    return tensors


def _save(tensors: dict, out: str) -> None:
    from safetensors.torch import save_file

    tmp = out + ".tmp"
    save_file(tensors, tmp)
    os.replace(tmp, out)


def t5_tokenizer_cache(hf_home: str) -> str:
    """google/t5-v1_1-xxl as a tiny Unigram tokenizer.json (see the module docstring)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    snap = _snapshot_dir(hf_home, "google/t5-v1_1-xxl")
    pieces = ["<pad>", "</s>", "<unk>", "\u2581"] + list("abcdefghijklmnopqrstuvwxyz")
    tok = Tokenizer(models.Unigram([(p, 0.0 if i < 3 else -1.0 - i) for i, p in enumerate(pieces)], unk_id=2))
    tok.normalizer = normalizers.Sequence([normalizers.Replace(" {2,}", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", add_prefix_space=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", add_prefix_space=True)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    tok.save(os.path.join(snap, "tokenizer.json"))
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    with open(os.path.join(snap, "special_tokens_map.json"), "w") as f:
        json.dump(special, f)
    with open(os.path.join(snap, "tokenizer_config.json"), "w") as f:
        json.dump({**special, "extra_ids": 0, "model_max_length": 512, "tokenizer_class": "T5Tokenizer"}, f)
    return snap


def checkpoint(out: str, seed: int, a1111: str) -> None:
    if os.path.exists(out):
        return
    sys.path[:0] = [os.path.join(a1111, "repositories", "stable-diffusion-stability-ai")]
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(a1111, "configs", "v1-inference.yaml"))
    restore = _clip_l_without_download()
    try:
        from ldm.util import instantiate_from_config

        model = instantiate_from_config(cfg.model)  # on the CPU (about 4 GB): ldm's schedule code needs real tensors
    finally:
        restore()
    _save(_random_state_dict(model, seed), out)


G_ARCH, G_WIDTH, G_EMBED = "ViT-B-32", 512, 512  # open_clip's text tower for that arch: width, projection


def sdxl_config(a1111: str):
    """generative-models' sd_xl_base.yaml at reduced size (see the module docstring)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(a1111, "repositories", "generative-models", "configs", "inference", "sd_xl_base.yaml"))
    p = cfg.model.params
    unet = p.network_config.params
    unet.model_channels = 64
    unet.transformer_depth = [1, 1, 2]
    unet.context_dim = CLIP_L_TEXT_CONFIG["hidden_size"] + G_WIDTH
    unet.adm_in_channels = G_EMBED + 3 * 2 * 256  # pooled text + three size embeddings of 2 x 256
    unet.use_checkpoint = False
    g = p.conditioner_config.params.emb_models[1]
    assert g.target.endswith("FrozenOpenCLIPEmbedder2")
    g.params.arch = G_ARCH
    g.params.version = None  # no pretrained weights (the web UI's --do-not-download-clip does the same)
    vae = p.first_stage_config.params.ddconfig
    vae.ch = 32
    vae.num_res_blocks = 1
    return cfg


def sd2_config(a1111: str):
    """The web UI's v2-inference.yaml at reduced size (see the module docstring)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(a1111, "repositories", "stable-diffusion-stability-ai", "configs",
                                      "stable-diffusion", "v2-inference.yaml"))
    p = cfg.model.params
    unet = p.unet_config.params
    unet.model_channels = 64
    unet.transformer_depth = 1
    unet.context_dim = G_WIDTH
    unet.use_checkpoint = False
    text = p.cond_stage_config.params
    assert p.cond_stage_config.target.endswith("FrozenOpenCLIPEmbedder")
    text.arch = G_ARCH
    text.version = None  # no pretrained weights (the web UI's --do-not-download-clip does the same)
    vae = p.first_stage_config.params.ddconfig
    vae.ch = 32
    vae.num_res_blocks = 1
    return cfg


def sd2_checkpoint(out: str, seed: int, a1111: str) -> None:
    _with_yaml(out, seed, sd2_config(a1111), os.path.join(a1111, "repositories", "stable-diffusion-stability-ai"),
               "ldm.util")


def _with_yaml(out: str, seed: int, cfg, repository: str, util: str) -> None:
    """A random checkpoint of the model `cfg` describes (built by `util`.instantiate_from_config from
    `repository`), with the config beside it as OUT.yaml."""
    import importlib

    from omegaconf import OmegaConf

    yaml_path = os.path.splitext(out)[0] + ".yaml"
    if os.path.exists(out) and os.path.exists(yaml_path):
        return
    sys.path[:0] = [repository]
    restore = _clip_l_without_download()
    try:
        model = importlib.import_module(util).instantiate_from_config(cfg.model)
    finally:
        restore()
    _save(_random_state_dict(model, seed), out)
    tmp = yaml_path + ".tmp"
    OmegaConf.save(cfg, tmp)
    os.replace(tmp, yaml_path)


def sdxl_checkpoint(out: str, seed: int, a1111: str) -> None:
    _with_yaml(out, seed, sdxl_config(a1111), os.path.join(a1111, "repositories", "generative-models"), "sgm.util")


def sd3_checkpoint(out: str, seed: int, a1111: str, depth: int = 2) -> None:
    if os.path.exists(out):
        return
    import types

    import torch

    sys.path[:0] = [a1111]
    # the SD3 classes need only sd_hijack.TextualInversionEmbeddings (an nn.Embedding) to build
    hijack = types.ModuleType("modules.sd_hijack")

    class TextualInversionEmbeddings(torch.nn.Embedding):
        def __init__(self, num_embeddings, embedding_dim, textual_inversion_key="clip_l", **kw):
            super().__init__(num_embeddings, embedding_dim, **kw)

    hijack.TextualInversionEmbeddings = TextualInversionEmbeddings
    sys.modules["modules.sd_hijack"] = hijack
    from modules.models.sd3 import sd3_impls
    from modules.models.sd3.other_impls import SDClipModel, SDXLClipG

    # the text encoder configs, read from sd3_cond.py without importing it (it imports the
    # web UI's shared state, which parses the command line)
    import ast

    with open(os.path.join(a1111, "modules", "models", "sd3", "sd3_cond.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    sd3_cond = types.SimpleNamespace(**{t.id: ast.literal_eval(node.value) for node in tree.body
                                        if isinstance(node, ast.Assign) for t in node.targets
                                        if isinstance(t, ast.Name) and t.id.endswith("_CONFIG")})

    meta, fp16 = torch.device("meta"), torch.float16
    hidden = 64 * depth
    shapes = {"x_embedder.proj.weight": torch.empty(hidden, 16, 2, 2, device=meta),
              "pos_embed": torch.empty(1, 192 * 192, hidden, device=meta),
              "y_embedder.mlp.0.weight": torch.empty(hidden, 2048, device=meta),
              "context_embedder.weight": torch.empty(hidden, 4096, device=meta)}
    with torch.no_grad():  # as the web UI builds them (CLIPTextModel copies the identity into a parameter)
        parts = {
            "model.": sd3_impls.BaseModel(shift=3, state_dict={"model.diffusion_model." + k: v for k, v in shapes.items()},
                                          prefix="model.diffusion_model.", device=meta, dtype=fp16),
            "first_stage_model.": sd3_impls.SDVAE(device=meta, dtype=fp16),
            "text_encoders.clip_g.": SDXLClipG(sd3_cond.CLIPG_CONFIG, device=meta, dtype=fp16),
            "text_encoders.clip_l.": SDClipModel(layer="hidden", layer_idx=-2, device=meta, dtype=fp16,
                                                 layer_norm_hidden_state=False, return_projected_pooled=False,
                                                 textmodel_json_config=sd3_cond.CLIPL_CONFIG),
        }

    class Whole(torch.nn.Module):
        def state_dict(self, *a, **k):
            return {prefix + key: v for prefix, m in parts.items() for key, v in m.state_dict().items()
                    if not key.startswith("model_sampling.")}

    tensors = _random_state_dict(Whole(), seed)
    for k in list(tensors):
        if k.endswith("text_projection.weight"):  # the web UI starts them at the identity
            tensors[k] = torch.eye(tensors[k].shape[0], dtype=fp16)
    _save(tensors, out)


def main() -> None:
    builders = {"checkpoint": checkpoint, "sd2-checkpoint": sd2_checkpoint, "sdxl-checkpoint": sdxl_checkpoint,
                "sd3-checkpoint": sd3_checkpoint}
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("hf-cache").add_argument("hf_home")
    for name in builders:
        b = sub.add_parser(name)
        b.add_argument("out")
        b.add_argument("--seed", type=int, default=0)
        b.add_argument("--a1111", default=os.environ.get("A1111_DIR", "."))
    args = ap.parse_args()
    if args.cmd == "hf-cache":
        print(hf_cache(args.hf_home))
        print(t5_tokenizer_cache(args.hf_home))
    else:
        builders[args.cmd](args.out, args.seed, args.a1111)
        print(args.out)


if __name__ == "__main__":
    main()
