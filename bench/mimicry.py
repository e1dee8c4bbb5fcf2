"""The mimicry benchmark on the test-bed (testbed/model): does protecting an artist's
images stop a mimic from learning their style?

The artist is the style train.py held out (testbed/styles.py: HELD_OUT, "mosaic"): the
test-bed model has never seen it. For every seed:

1. take N images of that style (seed-dependent image set);
2. make one training set per condition: clean; same-budget uniform noise (the control);
   and each method protected with `advdm.protect` at 8/255 (the `fast` preset: 30 PGD
   steps of 1/255) on the test-bed model loaded with the project's own loader
   (`advdm.models.checkpoints.load_model`, prompt "a painting" - the artist does not know the
   mimic's prompt);
3. the mimic fine-tunes the test-bed UNet on each set, DreamBooth-style, with the prompt
   "a painting in style sks" ("sks" is a token the model was never trained on): full
   fine-tuning (lr 1e-3, 200 steps, all N images per step); with --finetune also a rank-4
   LoRA on the attention projections ("lora", lr 3e-3) and textual inversion ("ti", the
   paper's mimic: only the embedding of "sks" learns, lr 5e-3);
4. generates G images with that prompt (DDIM, classifier-free guidance), the same noise
   for every condition;
5. scores them with a style classifier trained here on all seven styles including the
   held-out one (fresh images, disjoint seeds, noise/flip augmentation):
     P(style) - mean classifier probability of the held-out style (higher: closer), and
     dist     - distance of the mean of the classifier's penultimate features of the
                generations to that of real held-out images, relative to the average
                distance between style centroids (lower: closer).
Also SDEdit (img2img with the base model, prompt "a painting") at two strengths: RMSE
(/255) of the edit of each condition's images from the edit of the clean images, same
noise; and the `advdm.measure` loss gain of the protected images (x clean loss).

With --latent-oracle, the encoder is taken out of the way: AdvDM (and same-size noise) is
applied to the latents directly, at L_inf budgets in latent units, and the mimic fine-tunes
on those latents. It asks whether the denoiser and the mimic could be disrupted at all if
the encoder passed on a large latent change, as SD's fragile encoder does; the table's
"VAE-decoded change" column says how visible each set's latent change is.

Done-when of issue 8: protected fine-tunes farther from the style than clean *and* than
the noise control, across seeds.

    /work/venv/bin/python bench/mimicry.py                  # full: 3 seeds, all methods
    /work/venv/bin/python bench/mimicry.py --quick          # smoke run (a minute or two)
    /work/venv/bin/python bench/mimicry.py --methods advdm --seeds 0,1,2 --json out.json
    /work/venv/bin/python bench/mimicry.py --methods advdm --pgd-steps 100 --latent-oracle 0.3,0.6,1.2
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "testbed"))

import styles  # noqa: E402

from advdm.attack.pgd import ProtectConfig, protect  # noqa: E402
from advdm.models.checkpoints import load_model  # noqa: E402
from advdm.models.draws import Draws  # noqa: E402
from advdm.evaluation.measure import DrawLosses, fixed_loss, noise_control  # noqa: E402
from advdm.evaluation.mimicry import MimicryConfig, fractions, noise_set, seed_losses  # noqa: E402
from advdm.evaluation.stats import ratio_across_units, ratio_of_means  # noqa: E402
from advdm.mimic.finetune import FinetuneConfig  # noqa: E402
from advdm.models.interface import diffusion_loss  # noqa: E402
from advdm.attack.objectives import SURROGATE_METHODS  # noqa: E402

TOKEN = "sks"
MIMIC_PROMPT = f"a painting in style {TOKEN}"
EDIT_PROMPT = "a painting"
METHODS = ("advdm", "mist", "sds", "photoguard", "ace", "anti-dreambooth", "mist-v2")
FULL_LR, LORA_LR, TI_LR = 1e-3, 3e-3, 5e-3
# Paired differences at or below this count as ties: noise-control fine-tunes land within
# 0.001 of clean ones, which is no evidence of anything.
TIE = 0.01


# ------------------------------------------------------------------ model parts
def load_parts(path: Path):
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    o = dict(local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **o).eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **o).eval().requires_grad_(False)
    te = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **o).eval().requires_grad_(False)
    tok = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **o)
    ddpm = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **o)
    ddim = DDIMScheduler.from_config(ddpm.config)
    return dict(unet=unet, vae=vae, te=te, tok=tok, ddpm=ddpm, ddim=ddim, scale=vae.config.scaling_factor)


def context(parts, prompts):
    ids = parts["tok"](prompts, padding="max_length", max_length=parts["te"].config.max_position_embeddings,
                       truncation=True, return_tensors="pt").input_ids
    return parts["te"](ids).last_hidden_state


# ------------------------------------------------------------------ the mimic
class LoRALinear(nn.Module):
    """y = W x + (alpha / r) B A x, B starts at zero (Hu et al. 2021)."""

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 4.0, gen=None):
        super().__init__()
        self.base = base
        self.a = nn.Parameter(torch.randn(rank, base.in_features, generator=gen) / math.sqrt(base.in_features))
        self.b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.a), self.b) * self.scale


def add_lora(unet, rank: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    params = []
    for module in list(unet.modules()):
        if type(module).__name__ != "Attention":
            continue
        for name in ("to_q", "to_k", "to_v"):
            lora = LoRALinear(getattr(module, name), rank, gen=gen)
            setattr(module, name, lora)
            params += [lora.a, lora.b]
        lora = LoRALinear(module.to_out[0], rank, gen=gen)
        module.to_out[0] = lora
        params += [lora.a, lora.b]
    return params


def finetune(parts, images, mode: str, steps: int, seed: int, latents=None):
    """DreamBooth-style fine-tuning on `images` with MIMIC_PROMPT: of a copy of the whole UNet
    ("full") or of a LoRA on it ("lora"), text encoder frozen; or textual inversion ("ti",
    the paper's mimic): only the new token's embedding learns, UNet and the rest of the text
    encoder frozen. `latents` (scaled, as the UNet sees them) replace the encoded images:
    the latent oracle's sets. Returns the parts with the tuned copies in place."""
    torch.manual_seed(seed)
    unet, te = parts["unet"], parts["te"]
    if mode == "ti":
        te = copy.deepcopy(te)
        table = te.get_input_embeddings().weight
        only_token = torch.zeros(len(table), 1)
        only_token[parts["tok"].convert_tokens_to_ids(TOKEN + "</w>")] = 1
        table.requires_grad_(True).register_hook(lambda g: g * only_token)
        # no weight decay: AdamW's decay would shrink every row, not just the token's
        opt = torch.optim.AdamW([table], lr=TI_LR, weight_decay=0.0)
    else:
        unet = copy.deepcopy(unet)
        if mode == "full":
            unet.requires_grad_(True)
            params, lr = list(unet.parameters()), FULL_LR
        else:
            params, lr = add_lora(unet, rank=4, seed=seed), LORA_LR
        unet.train()
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    tuned = dict(parts, unet=unet, te=te)
    gen = torch.Generator().manual_seed(seed + 777)
    with torch.no_grad():
        if latents is None:
            post = parts["vae"].encode(images * 2 - 1).latent_dist  # the mimic encodes once
            mean, std = post.mean, post.std
        else:
            mean, std = latents / parts["scale"], torch.zeros_like(latents)
        count = len(mean)
        ctx = context(tuned, [MIMIC_PROMPT]).expand(count, -1, -1)
    abar = parts["ddpm"].alphas_cumprod
    for _ in range(steps):
        z = (mean + std * torch.randn(mean.shape, generator=gen)) * parts["scale"]
        t = torch.randint(0, len(abar), (count,), generator=gen)
        n = torch.randn(z.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        if mode == "ti":
            ctx = context(tuned, [MIMIC_PROMPT]).expand(count, -1, -1)
        loss = F.mse_loss(unet(a.sqrt() * z + (1 - a).sqrt() * n, t, encoder_hidden_states=ctx).sample, n)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    unet.eval().requires_grad_(False)
    te.requires_grad_(False)
    return tuned


@torch.no_grad()
def generate(parts, prompt, count, seed, steps, guidance, batch=8):
    sched = copy.deepcopy(parts["ddim"])
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, count, batch):
        k = min(batch, count - start)
        ctx = torch.cat([context(parts, [prompt] * k), context(parts, [""] * k)])
        z = torch.randn((k, 4, 16, 16), generator=gen)
        for t in sched.timesteps:
            ec, eu = parts["unet"](torch.cat([z, z]), t, encoder_hidden_states=ctx).sample.chunk(2)
            z = sched.step(eu + guidance * (ec - eu), t, z).prev_sample
        out.append(decode(parts, z))
    return torch.cat(out)


@torch.no_grad()
def decode(parts, latents):
    return ((parts["vae"].decode(latents / parts["scale"]).sample + 1) / 2).clamp(0, 1)


@torch.no_grad()
def sdedit(parts, images, strength, seed, steps, guidance=3.0):
    """img2img: noise the (posterior-mean) latent to `strength` of the schedule, then DDIM
    back with the base model; the same noise for every condition."""
    sched = copy.deepcopy(parts["ddim"])
    sched.set_timesteps(steps)
    ts = sched.timesteps[int(round(steps * (1 - strength))):]
    gen = torch.Generator().manual_seed(seed)
    z0 = parts["vae"].encode(images * 2 - 1).latent_dist.mean * parts["scale"]
    noise = torch.randn(z0.shape, generator=gen)
    z = sched.add_noise(z0, noise, ts[:1].repeat(len(images)))
    ctx = torch.cat([context(parts, [EDIT_PROMPT] * len(images)), context(parts, [""] * len(images))])
    for t in ts:
        ec, eu = parts["unet"](torch.cat([z, z]), t, encoder_hidden_states=ctx).sample.chunk(2)
        z = sched.step(eu + guidance * (ec - eu), t, z).prev_sample
    return decode(parts, z)


# ------------------------------------------------------------------ the latent oracle
def latent_advdm(model, z, epsilon: float, steps: int, seed: int):
    """AdvDM on the latents themselves, as if the encoder passed on any latent change:
    sign-PGD on the model's training loss (advdm.models.interface.diffusion_loss, the loss
    `advdm.protect` raises through the encoder), from a random start, within an L_inf ball
    of `epsilon` scaled-latent units (the latents have std ~1). The most an attack through
    a fragile encoder could do to the mimic's data at that latent size."""
    draws = Draws(model, seed)
    delta = draws.uniform(z.shape, -epsilon, epsilon)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = diffusion_loss(model, z + delta, draws.sigmas(len(z)), draws.normal(z.shape)).mean()
        grad, = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + epsilon / 20 * grad.sign()).clamp(-epsilon, epsilon)
    return z + delta


def latent_noise(z, epsilon: float, seed: int):
    """The oracle's control: uniform noise of the same L_inf size on the latents."""
    gen = torch.Generator().manual_seed(seed)
    return z + (torch.rand(z.shape, generator=gen) * 2 - 1) * epsilon


# ------------------------------------------------------------------ the judge
class StyleNet(nn.Module):
    def __init__(self, classes):
        super().__init__()
        layers, c = [], 3
        for w in (32, 64, 96, 128):
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.GroupNorm(8, w), nn.SiLU()]
            c = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, classes)

    def features(self, x):
        return self.body(x * 2 - 1).mean(dim=(2, 3))

    def forward(self, x):
        return self.head(self.features(x))


def train_judge(per_style: int, steps: int, log):
    """A style classifier on all styles (the held-out one included), seeds 20000+: never
    the images the benchmark protects. Augmented with flips, Gaussian noise up to 8/255
    and slight blur, so that it judges style, not pixel noise."""
    torch.manual_seed(1234)
    xs = torch.cat([styles.batch(s, range(20000, 20000 + per_style)) for s in styles.STYLES])
    ys = torch.arange(len(styles.STYLES)).repeat_interleave(per_style)
    net = StyleNet(len(styles.STYLES))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(4321)
    for step in range(steps):
        idx = torch.randint(len(xs), (32,), generator=gen)
        x = xs[idx]
        flip = torch.rand(32, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        blur = torch.rand(32, generator=gen) < 0.3
        x = torch.where(blur.view(-1, 1, 1, 1), F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), x)
        x = (x + torch.randn(x.shape, generator=gen) * torch.rand(32, 1, 1, 1, generator=gen) * 8 / 255).clamp(0, 1)
        loss = F.cross_entropy(net(x), ys[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval().requires_grad_(False)
    test = torch.cat([styles.batch(s, range(30000, 30040)) for s in styles.STYLES])
    test_y = torch.arange(len(styles.STYLES)).repeat_interleave(40)
    with torch.no_grad():
        acc = (net(test).argmax(1) == test_y).float().mean().item()
        feats = net.features(test)
    centroids = torch.stack([feats[test_y == i].mean(0) for i in range(len(styles.STYLES))])
    spread = torch.pdist(centroids).mean().item()
    log(f"judge: {steps} steps, held-out test accuracy {acc:.3f} over {len(styles.STYLES)} styles")
    return net, centroids[styles.STYLES.index(styles.HELD_OUT)], spread, acc


@torch.no_grad()
def judge(net, centroid, spread, images):
    k = styles.STYLES.index(styles.HELD_OUT)
    p = net(images).softmax(1)[:, k].mean().item()
    d = (net.features(images).mean(0) - centroid).norm().item() / spread
    return p, d


# ------------------------------------------------------------------ the learned-fraction judge
def fraction_run(args, model, methods, seeds, pgd_steps, pgd_samples, log) -> dict:
    """The mimicry check's judge (advdm.evaluation.mimicry): per seed, a LoRA fine-tune on
    the clean, each protected and each same-budget noise set of the seed's images, and the
    loss on fresh held-out images of the style with the base model as zero. One fine-tune
    seed per benchmark seed, so the table's spread is the spread across fine-tune seeds.

    Also each set's loss on the base model (set_draw_losses): the mean loss of each image
    over the same fixed draws for every set, kept per image so that the table's loss gain
    can be bootstrapped across images.

    The fine-tune-aware methods' surrogate trains at --surrogate-lr (default: the mimic's
    --lora-lr): the surrogate stands in for the mimic, and the test-bed model learns at
    that rate, not at the default 1e-4 set for SD-sized models. The other methods do not
    read it, so their sets are the same as without it."""
    epsilons = [float(e) for e in args.epsilons.split(",")]
    surrogate_lr = args.surrogate_lr if args.surrogate_lr is not None else args.lora_lr
    config = MimicryConfig(finetune=FinetuneConfig(steps=args.ft_steps, rank=args.lora_rank, lr=args.lora_lr),
                           draws=args.fraction_draws, mimic=args.fraction_mimic, ti_prompt=MIMIC_PROMPT, ti_lr=TI_LR)
    per_seed = {}  # seed -> the check's per-draw losses (condition -> held_out / in_sample)
    gains = {}  # seed -> condition -> per-image mean loss on the base model (fixed draws)
    for seed in seeds:
        clean = [x[None] for x in styles.batch(styles.HELD_OUT, range(10000 + 100 * seed, 10000 + 100 * seed + args.images))]
        held = [x[None] for x in styles.batch(styles.HELD_OUT, range(60000 + 100 * seed, 60000 + 100 * seed + args.images))]
        sets = {"clean": clean}
        for eps in epsilons:
            for m in methods:
                extra = {"surrogate_lr": surrogate_lr} if m in SURROGATE_METHODS else {}
                for knob in ("surrogate_steps", "surrogate_every"):
                    if m in SURROGATE_METHODS and getattr(args, knob) is not None:
                        extra[knob] = getattr(args, knob)
                cfg = ProtectConfig.preset("fast", method=m, epsilon=eps, steps=pgd_steps, samples=pgd_samples, seed=seed,
                                           **extra)
                t0 = time.time()
                sets[f"{m} {eps:g}"] = [protect(model, x, cfg) for x in clean]
                log(f"seed {seed}: {m} {eps:g}: {time.time() - t0:.0f} s for {len(clean)} images")
                sets[f"noise {eps:g}"] = noise_set(clean, sets[f"{m} {eps:g}"], seed)
            log(f"seed {seed}: protected and noise sets at {eps:g}/255")
        gains[seed] = {c: set_draw_losses(model, xs, args.fraction_draws) for c, xs in sets.items()}
        per_seed[seed] = seed_losses(model, sets, held, clean, config, seed)
        log(f"seed {seed}: " + ", ".join(f"{c} {v['held_out'].mean().item():.4f}" for c, v in per_seed[seed].items()))
        if args.json:
            Path(args.json).write_text(json.dumps(fraction_json(args, per_seed, methods, epsilons, gains), indent=1))
    return fraction_json(args, per_seed, methods, epsilons, gains)


def set_draw_losses(model, images, draws: int, seed: int = 0):
    """Per image, its mean diffusion loss on the base model over `draws` fixed draws (the
    same draws for every image, so clean and protected copies are compared draw by draw)."""
    return [DrawLosses(model, x, seed).losses(draws).mean().item() for x in images]


def fraction_json(args, per_seed: dict, methods, epsilons, gains=None) -> dict:
    return {"args": vars(args), "methods": methods, "epsilons": epsilons,
            "surrogate_lr": args.surrogate_lr if args.surrogate_lr is not None else args.lora_lr,
            "losses": {str(seed): {c: {k: v.tolist() for k, v in d.items()} for c, d in s.items()}
                       for seed, s in per_seed.items()},
            "gains": {str(seed): g for seed, g in (gains or {}).items()}}


def loss_gain(gains: dict, condition: str):
    """The set's loss on the base model over the clean set's, pooled over every seed's
    images (ratio of means), with a 95% bootstrap-t interval resampling images; None if no
    seed has the figures (files written before the column existed)."""
    seeds = [g for g in gains.values() if condition in g and "clean" in g]
    if not seeds:
        return None
    num = torch.tensor([v for g in seeds for v in g[condition]])
    den = torch.tensor([v for g in seeds for v in g["clean"]])
    return ratio_of_means(num, den)


def render_fractions(runs) -> str:
    """The judge's table from one or more fraction_json dicts (seeds joined): per condition
    the learned fraction across seeds (ratio of seed means, Student's t over seeds), the
    mean ± stdev of the per-seed fractions, the mean half-width of the per-seed (draws only)
    intervals, and the in-sample fraction."""
    losses, gains = {}, {}
    for run in runs:
        losses.update(run["losses"])
        gains.update(run.get("gains", {}))
    per_seed = [{c: {k: torch.tensor(v) for k, v in d.items()} for c, d in s.items()} for _, s in sorted(losses.items(), key=lambda kv: int(kv[0]))]
    lines = ["| condition | held-out learned fraction (95% CI over seeds) | per seed: mean ± stdev | per-seed CI half-width (draws only) | in-sample fraction (95% CI) | loss gain x clean (95% CI over images) | fraction minus AdvDM's, same seeds (95% CI) |",
             "|" + " --- |" * 7]
    conds = [c for c in per_seed[0] if c not in ("base", "clean")]
    for c in conds:
        f = fractions(per_seed, c, c)
        each = [fractions([s], c, c) for s in per_seed]
        each = [e for e in each if e["learned_fraction"] is not None]  # seeds whose clean fine-tune learned
        vals = [e["learned_fraction"] for e in each] or [float("nan")]
        halfs = [(e["learned_fraction_high"] - e["learned_fraction_low"]) / 2 for e in each] or [float("nan")]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0

        def ci(key):
            return "n/a" if f[key] is None else f"{f[key]:.3f} ({f[key + '_low']:.3f} to {f[key + '_high']:.3f})"

        lines.append(f"| {c} | {ci('learned_fraction')} | {statistics.mean(vals):.3f} ± {sd:.3f} ({len(each)} seeds) | "
                     f"{statistics.mean(halfs):.3f} | {ci('in_sample_fraction')} | {gain_cell(gains, c)} | "
                     f"{minus_advdm(per_seed, c)} |")
    f = fractions(per_seed, conds[0], conds[0])
    lines.append(f"\n{len(per_seed)} seeds; held-out loss base {f['loss_base']:.4f}, clean fine-tune {f['loss_clean']:.4f} "
                 f"(drop {f['clean_drop']:.1%} of base, 95% CI {f['clean_drop_low']:.1%} to {f['clean_drop_high']:.1%})")
    lrs = sorted({run["surrogate_lr"] for run in runs if "surrogate_lr" in run})
    if lrs:
        lines[-1] += f"; surrogate lr {', '.join(f'{lr:g}' for lr in lrs)}"
    if gains:
        lines[-1] += ("; loss gain: each set's base-model loss over the clean set's, the same fixed draws per image, "
                      "pooled over the seeds' images, bootstrap-t over images")
    return "\n".join(lines)


def minus_advdm(per_seed, condition: str) -> str:
    """The condition's held-out learned fraction minus AdvDM's at the same budget, paired by
    seed (same images, fine-tune seed and draws): per seed (L_advdm - L_cond) / (L_base -
    L_clean), ratio of seed means with Student's t over seeds, as the fraction itself."""
    ref = "advdm " + condition.rsplit(" ", 1)[-1]
    if condition == ref or len(per_seed) < 2 or any(ref not in s for s in per_seed):
        return "-"
    if not fractions(per_seed, condition, condition)["learned"]:
        return "n/a"
    num = torch.stack([s[ref]["held_out"].double().mean() - s[condition]["held_out"].double().mean() for s in per_seed])
    den = torch.stack([s["base"]["held_out"].double().mean() - s["clean"]["held_out"].double().mean() for s in per_seed])
    d = ratio_across_units(num, den)
    return f"{d.estimate:+.3f} ({d.low:+.3f} to {d.high:+.3f})"


def gain_cell(gains: dict, condition: str) -> str:
    g = loss_gain(gains, condition)
    return "n/a" if g is None else f"{g.estimate:.3f} ({g.low:.3f} to {g.high:.3f})"


# ------------------------------------------------------------------ the run
def render(results: dict, modes, strengths) -> str:
    """The markdown table: one row per condition, mean ± stdev over seeds."""
    cols = ["loss_gain", "decoded"] + [f"{m}_{k}" for m in modes for k in ("p", "dist")] + [f"sdedit_{s}" for s in strengths]
    head = {"loss_gain": "loss x clean", "decoded": "VAE-decoded change (/255)"}
    for m in modes:
        head[f"{m}_p"] = f"{m} FT: P(style) ↑close"
        head[f"{m}_dist"] = f"{m} FT: dist ↓close"
    for s in strengths:
        head[f"sdedit_{s}"] = f"SDEdit {s}: RMSE vs clean edit"

    def cell(vals):
        if not vals:
            return ""
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.3f} ± {sd:.3f}"

    lines = ["| condition | " + " | ".join(head[c] for c in cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    for c in results:
        name = "base model, no fine-tune" if c == "base" else c
        lines.append(f"| {name} | " + " | ".join(cell(results[c].get(k, [])) for k in cols) + " |")
    return "\n".join(lines)


def references(condition: str):
    """The fine-tunes a condition is paired against: clean, and its same-budget noise
    control (pixel noise; for the latent oracle, latent noise of the same size)."""
    if condition.startswith("latent "):
        control = condition.replace("advdm", "noise")
        return ["clean"] if control == condition else ["clean", control]
    return ["clean", "noise"]


def render_paired(results: dict, modes) -> str:
    """The done-when, per seed: each condition's fine-tune against the clean and the noise
    fine-tune of the *same* seed (same images, same fine-tuning and sampling noise), so the
    seed-to-seed spread of the fine-tunes themselves cancels. Farther = P lower and dist
    higher, each by more than TIE."""
    lines = ["| condition | mimic | vs | P(style) change | dist change | farther in (by > %g on both) |" % TIE,
             "|" + " --- |" * 6]
    for c in results:
        if c in ("base", "clean"):
            continue
        for mode in modes:
            for ref in references(c):
                if ref == c or f"{mode}_p" not in results.get(ref, {}):
                    continue
                dp = [a - b for a, b in zip(results[c][f"{mode}_p"], results[ref][f"{mode}_p"])]
                dd = [a - b for a, b in zip(results[c][f"{mode}_dist"], results[ref][f"{mode}_dist"])]
                farther = sum(p < -TIE and d > TIE for p, d in zip(dp, dd))

                def cell(v):
                    return f"{statistics.mean(v):+.3f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.3f}"

                lines.append(f"| {c} | {mode} | {ref} | {cell(dp)} | {cell(dd)} | {farther}/{len(dp)} seeds |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "testbed" / "model"))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--images", type=int, default=4, help="held-out style images per set")
    p.add_argument("--epsilon", type=float, default=8.0, help="L_inf budget, /255")
    p.add_argument("--pgd-steps", type=int, default=None, help="default: the fast preset's (30)")
    p.add_argument("--pgd-samples", type=int, default=None, help="Monte-Carlo samples per PGD step (default: the fast preset's, 1)")
    p.add_argument("--latent-oracle", default="", metavar="BUDGETS",
                   help="comma-separated L_inf budgets in scaled-latent units (latent std ~1): AdvDM and "
                        "noise applied to the latents directly, bypassing the encoder (see latent_advdm)")
    p.add_argument("--finetune", default="full", help="comma-separated mimics: full, lora, ti (textual inversion)")
    p.add_argument("--ft-steps", type=int, default=200)
    p.add_argument("--generate", type=int, default=16, help="generations per fine-tune")
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--strengths", default="0.3,0.6")
    p.add_argument("--judge-steps", type=int, default=400)
    p.add_argument("--judges", default="classifier", help="comma-separated: classifier (generations scored by the "
                   "style classifier), fraction (the mimicry check's held-out learned fraction, LoRA mimic)")
    p.add_argument("--epsilons", default="8,16", help="fraction judge: budgets /255, each with its own noise control")
    p.add_argument("--fraction-mimic", default="lora", choices=("lora", "textual-inversion"),
                   help=f"fraction judge: the mimic (textual inversion learns '{TOKEN}' in '{MIMIC_PROMPT}', lr {TI_LR:g})")
    p.add_argument("--lora-rank", type=int, default=8, help="fraction judge: LoRA rank")
    p.add_argument("--lora-lr", type=float, default=1e-3, help="fraction judge: LoRA learning rate")
    p.add_argument("--fraction-draws", type=int, default=32, help="fraction judge: fixed draws per evaluated image "
                   "(also the draws of the loss-gain column)")
    p.add_argument("--surrogate-lr", type=float, default=None,
                   help="fraction judge: learning rate of the fine-tune-aware methods' LoRA surrogate "
                        "(default: --lora-lr, the rate the test-bed model learns at)")
    p.add_argument("--surrogate-steps", type=int, default=None,
                   help="fraction judge: the surrogate's fine-tuning steps per phase (default: the core's)")
    p.add_argument("--surrogate-every", type=int, default=None,
                   help="fraction judge: PGD steps between the surrogate's fine-tuning phases (default: the core's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, advdm only, few steps")
    p.add_argument("--json", help="write the raw numbers here")
    p.add_argument("--save-grid", help="write a PNG grid of the first seed's sets and generations")
    p.add_argument("--render", nargs="+", metavar="JSON",
                   help="re-print the tables of --json files (also partial ones; several runs over "
                        "different seeds are joined seed by seed) and exit")
    args = p.parse_args(argv)
    if args.render:
        runs = [json.loads(Path(f).read_text()) for f in args.render]
        if "losses" in runs[0]:  # the fraction judge's files
            print(render_fractions(runs))
            return runs
        results = {}  # condition -> metric -> values of every run's seeds, in order
        for run in runs:
            for cond, metrics in run["results"].items():
                for key, values in metrics.items():
                    results.setdefault(cond, {}).setdefault(key, []).extend(values)
        a = runs[0]["args"]
        print(render(results, a["finetune"].split(","), [float(x) for x in a["strengths"].split(",")]))
        print("\n" + render_paired(results, a["finetune"].split(",")))
        return results
    if args.quick:
        args.methods, args.seeds, args.images = "advdm", "0", 2
        args.pgd_steps, args.ft_steps, args.generate, args.sample_steps, args.judge_steps = 5, 20, 4, 10, 100
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",")]
    modes = [m for m in args.finetune.split(",") if m]
    strengths = [float(s) for s in args.strengths.split(",")]
    fast = ProtectConfig.preset("fast")
    pgd_steps = args.pgd_steps if args.pgd_steps is not None else fast.steps
    pgd_samples = args.pgd_samples if args.pgd_samples is not None else fast.samples
    t_start = time.time()

    def log(msg):
        print(f"[{time.time() - t_start:6.0f}s] {msg}", file=sys.stderr, flush=True)

    path = Path(args.checkpoint)
    # the project's loader, prompt "a painting"; the text encoder kept for a textual-inversion mimic
    model = load_model(str(path), torch.device("cpu"), torch.float32, keep_text=True)
    judges = args.judges.split(",")
    if "fraction" in judges:
        run = fraction_run(args, model, methods, seeds, pgd_steps, pgd_samples, log)
        print(render_fractions([run]))
        print(f"\nPGD {pgd_steps} steps x {pgd_samples} sample(s); {args.images} training and {args.images} held-out "
              f"'{styles.HELD_OUT}' images per seed; "
              + (f"LoRA r{args.lora_rank} lr {args.lora_lr:g}" if args.fraction_mimic == "lora" else
                 f"textual inversion of '{TOKEN}' in '{MIMIC_PROMPT}', lr {TI_LR:g}")
              + f", {args.ft_steps} steps; "
              f"{args.fraction_draws} draws per image; surrogate (anti-dreambooth, mist-v2) lr {run['surrogate_lr']:g}; "
              f"loss gain: base-model loss over the clean set's, {args.fraction_draws} fixed draws per image, "
              f"bootstrap over images; seeds {seeds}; {(time.time() - t_start) / 60:.1f} min")
        if "classifier" not in judges:
            return run
    parts = load_parts(path)
    net, centroid, spread, acc = train_judge(200 if not args.quick else 40, args.judge_steps, log)
    real_p, real_d = judge(net, centroid, spread, styles.batch(styles.HELD_OUT, range(40000, 40016)))
    log(f"judge on real held-out images: P {real_p:.3f}, dist {real_d:.3f}")

    budgets = [float(b) for b in args.latent_oracle.split(",") if b]
    oracle = [f"latent {kind} {b:g}" for b in budgets for kind in ("noise", "advdm")]
    conditions = ["clean", "noise", *methods, *oracle]
    results = {c: {} for c in ["base", *conditions]}  # condition -> metric -> [per seed]

    def put(cond, key, value):
        results[cond].setdefault(key, []).append(value)

    grid = []
    for seed in seeds:
        clean = styles.batch(styles.HELD_OUT, range(10000 + 100 * seed, 10000 + 100 * seed + args.images))
        sets = {"clean": clean,
                "noise": torch.cat([noise_control(x[None], args.epsilon, seed * 100 + i) for i, x in enumerate(clean)])}
        for m in methods:
            cfg = ProtectConfig.preset("fast", method=m, epsilon=args.epsilon, steps=pgd_steps,
                                       samples=pgd_samples, seed=seed)
            sets[m] = torch.cat([protect(model, x[None], cfg) for x in clean])
            log(f"seed {seed}: protected {len(clean)} images with {m}")
        with torch.no_grad():  # every set's latents, as the mimic (and img2img) see them
            latents = {c: model.encode(x).mean for c, x in sets.items()}
        for b in budgets:
            latents[f"latent noise {b:g}"] = latent_noise(latents["clean"], b, seed)
            latents[f"latent advdm {b:g}"] = latent_advdm(model, latents["clean"], b, pgd_steps, seed)
            log(f"seed {seed}: latent oracle at {b:g}")
        clean_decoded = decode(parts, latents["clean"])
        def set_loss(images):
            return statistics.mean(fixed_loss(model, x[None]) for x in images)

        clean_loss = set_loss(clean)
        for c in sets:
            linf = (sets[c] - clean).abs().max().item() * 255
            assert linf <= args.epsilon + 1e-3, (c, linf)
            put(c, "loss_gain", set_loss(sets[c]) / clean_loss)
        # reference: the base model with the untrained token (what "not learned" looks like)
        base_gen = generate(parts, MIMIC_PROMPT, args.generate, 1000 + seed, args.sample_steps, args.guidance)
        bp, bd = judge(net, centroid, spread, base_gen)
        for mode in modes:
            put("base", f"{mode}_p", bp)
            put("base", f"{mode}_dist", bd)
        clean_edits = {s: sdedit(parts, clean, s, 2000 + seed, args.sample_steps) for s in strengths}
        for c in conditions:
            decoded = decode(parts, latents[c])
            put(c, "decoded", (decoded - clean_decoded).pow(2).mean().sqrt().item() * 255)
            for mode in modes:
                # the oracle's sets exist only as latents; the others the mimic encodes itself
                tuned = finetune(parts, sets.get(c), mode, args.ft_steps, seed,
                                 latents=latents[c] if c in oracle else None)
                gen = generate(tuned, MIMIC_PROMPT, args.generate, 1000 + seed, args.sample_steps, args.guidance)
                pr, d = judge(net, centroid, spread, gen)
                put(c, f"{mode}_p", pr)
                put(c, f"{mode}_dist", d)
                if seed == seeds[0] and mode == modes[0]:
                    grid += [sets.get(c, decoded), gen[: args.images]]
                log(f"seed {seed}: {c:10s} {mode}: P(style) {pr:.3f}, dist {d:.3f}")
                del tuned
            for s in strengths if c in sets else ():
                edit = sdedit(parts, sets[c], s, 2000 + seed, args.sample_steps)
                put(c, f"sdedit_{s}", (edit - clean_edits[s]).pow(2).mean().sqrt().item() * 255)
        if args.json:  # after every seed, so an interrupted run keeps what it measured
            Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "judge_acc": acc,
                                                   "real": [real_p, real_d], "partial": True}, indent=1))
    elapsed = time.time() - t_start

    print(render(results, modes, strengths))
    print("\n" + render_paired(results, modes))
    print(f"\nbudget {args.epsilon:g}/255 L_inf; PGD {pgd_steps} steps of 1/255 x {pgd_samples} sample(s), prompt "
          f"'a painting'; {args.images} held-out '{styles.HELD_OUT}' images per seed; fine-tune "
          f"{args.ft_steps} steps ({', '.join(modes)}; full lr {FULL_LR:g}, LoRA r4 lr {LORA_LR:g}, TI lr {TI_LR:g}) on '{MIMIC_PROMPT}'; "
          f"{args.generate} generations, DDIM {args.sample_steps} steps, CFG {args.guidance}; seeds {seeds}; "
          f"mean ± stdev over seeds; judge accuracy {acc:.3f}, real held-out images P {real_p:.3f} dist "
          f"{real_d:.3f}; {elapsed / 60:.1f} min, {args.threads} thread(s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "judge_acc": acc,
                                               "real": [real_p, real_d], "seconds": elapsed}, indent=1))
    if args.save_grid and grid:
        styles.grid_png(torch.cat(grid), args.save_grid, ncol=args.images)
    return results


if __name__ == "__main__":
    main()
