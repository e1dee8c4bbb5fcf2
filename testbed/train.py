"""Train the test-bed: a small latent diffusion model on the procedural styles of
testbed/styles.py, saved as a diffusers StableDiffusionPipeline folder (testbed/model/).

    /work/venv/bin/python testbed/train.py            # the committed model (~40 min on 1 core)
    /work/venv/bin/python testbed/train.py --trial    # a 1-2 minute sizing run to /tmp

(a) AutoencoderKL 64x64x3 -> 16x16x4 (f=4): L1 + MSE reconstruction + a small KL term.
(b) UNet2DConditionModel on the VAE latents (eps prediction, DDPM scaled-linear schedule,
    1000 steps, as SD1.x), cross-attending to a tiny CLIPTextModel trained with it on
    prompts "a painting in style <name>" (10 % "a painting", 10 % empty for guidance).
The tokenizer is a CLIP BPE tokenizer built here from a small vocabulary.

The held-out style (styles.HELD_OUT) is never in the UNet's or the text encoder's data, and
its name never occurs in a training prompt: bench/mimicry.py fine-tunes on it with a fresh
token. Only the VAE (the generic image codec) sees it, from seeds the benchmark never uses.
Single-threaded (torch.set_num_threads(1)) and seeded.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import styles  # noqa: E402

HERE = Path(__file__).resolve().parent
TRAIN_STYLES = [s for s in styles.STYLES if s != styles.HELD_OUT]
# Words the tokenizer knows as single tokens. "sks", "zwx", "vrk" are never trained:
# fresh tokens for a mimic's fine-tuning.
WORDS = ["a", "an", "the", "painting", "picture", "image", "in", "of", "style", "by", "artwork",
         *styles.STYLES, "sks", "zwx", "vrk"]
PROMPT = "a painting in style {}"
MAX_TOKENS = 16
SEED = 0

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4,
    down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[16, 32, 64], layers_per_block=1, norm_num_groups=16, sample_size=64,
    mid_block_add_attention=False,  # fully convolutional: trained on 32x32 crops, used at 64x64
)
UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=[32, 64, 96],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16,
)
TEXT_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                   max_position_embeddings=MAX_TOKENS)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                        beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                        steps_offset=1)
KL_WEIGHT = 1e-5  # per pixel element: keeps the posterior std small, as in SD's VAE
UNET_LR = 8e-4
VAE_CROP = 32  # the VAE trains on random crops (4x cheaper than whole images)


# ---------------------------------------------------------------- tokenizer
def bytes_to_unicode():
    """CLIP's byte -> printable-unicode table (the alphabet its BPE works on)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tokenizer(folder: Path) -> None:
    """vocab.json + merges.txt for a CLIPTokenizer: lowercase letters and digits (so any
    word tokenizes), plus left-to-right merges that make each of WORDS one token."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = [], []

    def add(tok):
        if tok not in vocab:
            vocab.append(tok)

    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        add(c)
        add(c + "</w>")
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        cur = parts[0]
        for nxt in parts[1:]:
            merge = f"{cur} {nxt}"
            if merge not in merges:
                merges.append(merge)
            cur = cur + nxt
            add(cur)
    add("<|startoftext|>")
    add("<|endoftext|>")
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>",
                        model_max_length=MAX_TOKENS)
    tok.save_pretrained(str(folder))
    for word in WORDS:  # every word is one token
        ids = tok(word).input_ids
        assert len(ids) == 3, (word, ids, tok.convert_ids_to_tokens(ids))


def load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


def token_ids(tok, prompts):
    return torch.tensor(tok(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True).input_ids)


# ---------------------------------------------------------------- data
def dataset(per_style: int, seed_offset: int = 0, names=None):
    """(N, 3, 64, 64) images and their style indices (into `names`, default TRAIN_STYLES)."""
    xs, ys = [], []
    for i, s in enumerate(names or TRAIN_STYLES):
        xs.append(styles.batch(s, range(seed_offset, seed_offset + per_style)))
        ys += [i] * per_style
    return torch.cat(xs), torch.tensor(ys)


def lr_at(step, total, peak, warmup=200):
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1))))


# ---------------------------------------------------------------- (a) VAE
def train_vae(images, steps, batch, log):
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(SEED + 1)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 1e-3, warmup=100)
        idx = torch.randint(len(images), (batch,), generator=gen)
        i, j = torch.randint(0, 64 - VAE_CROP + 1, (2,), generator=gen).tolist()
        x = images[idx, :, i:i + VAE_CROP, j:j + VAE_CROP] * 2 - 1
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        rec_loss = (rec - x).abs().mean() + (rec - x).pow(2).mean()
        kl = 0.5 * (post.mean.pow(2) + post.var - 1 - post.logvar).sum(dim=(1, 2, 3)).mean() / x[0].numel()
        loss = rec_loss + KL_WEIGHT * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step:5d}  rec {rec_loss.item():.4f}  kl {kl.item():.3f}  {time.time() - t0:.0f}s")
    vae.eval().requires_grad_(False)
    return vae


@torch.no_grad()
def encode_all(vae, images, batch=64):
    means, stds = [], []
    for i in range(0, len(images), batch):
        d = vae.encode(images[i:i + batch] * 2 - 1).latent_dist
        means.append(d.mean)
        stds.append(d.std)
    return torch.cat(means), torch.cat(stds)


# ---------------------------------------------------------------- (b) UNet + text encoder
def make_text_encoder(tok):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **TEXT_CONFIG)
    torch.manual_seed(SEED + 2)
    return CLIPTextModel(cfg)


def prompt_for(style_idx: int, u: float) -> str:
    if u < 0.1:
        return ""
    if u < 0.2:
        return "a painting"
    return PROMPT.format(TRAIN_STYLES[style_idx])


def train_unet(means, stds, labels, tok, text_encoder, scheduler, scale, steps, batch, log):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED + 3)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=UNET_LR, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(SEED + 4)
    abar = scheduler.alphas_cumprod
    text_encoder.train()
    t0 = time.time()
    ema = None
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, UNET_LR)
        idx = torch.randint(len(means), (batch,), generator=gen)
        z = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
        t = torch.randint(0, 1000, (batch,), generator=gen)
        n = torch.randn(z.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z + (1 - a).sqrt() * n
        us = torch.rand(batch, generator=gen).tolist()
        ids = token_ids(tok, [prompt_for(int(labels[i]), u) for i, u in zip(idx, us)])
        ctx = text_encoder(ids).last_hidden_state
        pred = unet(zt, t, encoder_hidden_states=ctx).sample
        loss = F.mse_loss(pred, n)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step:5d}  loss {loss.item():.4f} (ema {ema:.4f})  {time.time() - t0:.0f}s")
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    return unet


# ---------------------------------------------------------------- sampling (for the check)
@torch.no_grad()
def sample(pipe_parts, prompts, seed, steps=30, guidance=3.0):
    """DDIM sampling with classifier-free guidance; returns (N, 3, 64, 64) in [0, 1]."""
    from diffusers import DDIMScheduler

    unet, vae, text_encoder, tok, scheduler = pipe_parts
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    ctx = text_encoder(token_ids(tok, prompts)).last_hidden_state
    unc = text_encoder(token_ids(tok, [""] * len(prompts))).last_hidden_state
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((len(prompts), 4, 16, 16), generator=gen)
    for t in ddim.timesteps:
        e = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([ctx, unc])).sample
        ec, eu = e.chunk(2)
        z = ddim.step(eu + guidance * (ec - eu), t, z).prev_sample
    return ((vae.decode(z / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE / "model"))
    p.add_argument("--per-style", type=int, default=600)
    p.add_argument("--vae-steps", type=int, default=1600)
    p.add_argument("--vae-batch", type=int, default=12)
    p.add_argument("--unet-steps", type=int, default=3200)
    p.add_argument("--unet-batch", type=int, default=16)
    p.add_argument("--trial", action="store_true", help="tiny sizing run into /tmp/testbed-trial")
    args = p.parse_args(argv)
    if args.trial:
        args.out, args.per_style, args.vae_steps, args.unet_steps = "/tmp/testbed-trial", 30, 101, 101
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "train_log.txt", "w")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    t_start = time.time()
    log(f"styles {TRAIN_STYLES} (held out: {styles.HELD_OUT}); args {vars(args)}")
    images, labels = dataset(args.per_style)
    # The VAE is the generic image codec (SD's saw nearly everything): it also sees the
    # held-out style, from seeds disjoint from the benchmark's; the UNet and the text
    # encoder never do.
    held = styles.batch(styles.HELD_OUT, range(50000, 50000 + args.per_style))
    log(f"data {tuple(images.shape)} + VAE-only held-out {tuple(held.shape)} in {time.time() - t_start:.0f}s")

    vae = train_vae(torch.cat([images, held]), args.vae_steps, args.vae_batch, log)
    del held
    means, stds = encode_all(vae, images)
    scale = float(1 / means.std())
    vae.register_to_config(scaling_factor=scale)
    log(f"latent std {means.std().item():.4f} -> scaling_factor {scale:.4f}; posterior std mean {stds.mean().item():.4f}")
    t_vae = time.time() - t_start

    tok_dir = out / "tokenizer"
    write_tokenizer(tok_dir)
    tok = load_tokenizer(tok_dir)
    text_encoder = make_text_encoder(tok)
    scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    unet = train_unet(means, stds, labels, tok, text_encoder, scheduler, scale, args.unet_steps, args.unet_batch, log)
    t_total = time.time() - t_start

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(out), safe_serialization=True)
    info = {"train_styles": TRAIN_STYLES, "held_out": styles.HELD_OUT, "prompt": PROMPT, "seed": SEED,
            "args": vars(args), "seconds_vae": round(t_vae), "seconds_total": round(t_total),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    (out / "testbed.json").write_text(json.dumps(info, indent=1) + "\n")
    log(f"training took {t_total / 60:.1f} min (VAE+data {t_vae / 60:.1f} min); saved {out}")

    # quick check: samples of every style, held-out one with its (untrained) name
    prompts = [PROMPT.format(s) for s in styles.STYLES for _ in range(4)]
    imgs = sample((unet, vae, text_encoder, tok, scheduler), prompts, seed=0)
    styles.grid_png(imgs, str(out.parent / "samples.png") if not args.trial else str(out / "samples.png"), ncol=8)


if __name__ == "__main__":
    main()
