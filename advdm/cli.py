"""Command line: python -m advdm {protect, measure, mimicry, selftest}."""
from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from . import __version__
from .models import builtin
from .attack.budget import pixel_bound
from .attack.pgd import FLOW_TIMESTEPS, PRESETS, ProtectConfig, protect
from .settings import DEFAULT_PRESET, IMG2IMG, MEASURE, MIMICRY, MIMICS, PROTECT, parse_strengths, strengths_text
from .models.checkpoints import DEFAULT_PROMPT, CheckpointError, load_model, pick_device, pick_dtype
from .batch import manifest
from .batch.resume import checkpoint_fingerprint, config_sha256, file_sha256, image_seed, input_hash, plan
from .images import ImageError, load_image, save_png, warn_if_lossy
from .batch.manifest import manifest_path
from .batch.ranks import Ranks
from .batch.worklist import find_work
from .evaluation.measure import MAX_SAMPLES, PRECISION, SAMPLES, format_measurement, measure
from .attack.objectives import METHODS
from .mimic.views import MODES as VIEWS

IMG2IMG_PICTURE = "_img2img.png"  # the img2img check's edits, beside the protected image

def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="single-file .safetensors/.ckpt (SD1.x, SD2.x, SDXL), "
                   "a diffusers folder, or builtin:NAME (random weights, smoke tests only: "
                   + ", ".join(builtin.BUILTINS) + ")")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="denoiser precision (auto: float16 on CUDA, else float32); the VAE stays float32")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"conditioning prompt (default {DEFAULT_PROMPT!r})")
    p.add_argument("--prediction", choices=["eps", "v"], help="override the parameterisation "
                   "(single-file SD2.x is taken as the 768 v model; pass eps for the 512 base)")


GRID_NAME = "mimicry_grid.png"


def _mimicry_args(sub) -> None:
    def knob(parser, name, kind=int, text=None, **kw):
        k = MIMICRY[name]
        default = f" (default {k.default:g})" if k.default is not None else ""
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=k.default,
                            help=(text or k.help) + default, **kw)

    p = sub.add_parser("mimicry", help="train a mimic (a LoRA, or textual inversion) on the clean, protected and "
                       "noise-control training images and report how much of the style it still learns (the learned "
                       "fraction on held-out images)")
    p.add_argument("--train", type=Path, nargs="+", required=True, help="the artist's clean training images")
    p.add_argument("--protected", type=Path, nargs="+", required=True, help="their protected copies, in the order of --train")
    p.add_argument("--held-out", type=Path, nargs="+", help="clean images of the same style NOT in --train (what the "
                   "mimic should learn). Without them each training image is cut in two: the left halves train, "
                   "the right halves are held out")
    _model_args(p)
    knob(p, "seeds")
    knob(p, "seed", text="the first seed")
    for name in ("steps", "rank"):
        knob(p, name)
    knob(p, "lr", float)
    knob(p, "batch")
    p.add_argument("--convs", action="store_true", help=MIMICRY["convs"].help)
    knob(p, "resolution")
    knob(p, "draws")
    p.add_argument("--mimic", choices=MIMICS["mimic"].choices, default=MIMICS["mimic"].default,
                   help=MIMICS["mimic"].help + f" (default {MIMICS['mimic'].default})")
    t = p.add_argument_group("textual inversion", "with --mimic textual-inversion (--steps, --batch and --resolution "
                             "apply too); needs the checkpoint's text encoder (SD1.x, SD2.x, SDXL)")
    for name in ("ti_prompt", "ti_word", "ti_init"):
        t.add_argument("--" + name.replace("_", "-"), default=MIMICS[name].default,
                       help=MIMICS[name].help + f" (default {MIMICS[name].default!r})")
    t.add_argument("--ti-lr", type=float, default=MIMICS["ti_lr"].default,
                   help=MIMICS["ti_lr"].help + f" (default {MIMICS['ti_lr'].default:g})")
    p.add_argument("--view", choices=MIMICRY["view"].choices, default=MIMICRY["view"].default,
                   help=MIMICRY["view"].help + f" (default {MIMICRY['view'].default})")
    g = p.add_argument_group("pictures", "after every fine-tune the model draws pictures from fixed seeds; the grid "
                             f"(rows base model, clean, protected and noise LoRA) is written as {GRID_NAME}")
    for name in ("pictures", "picture_steps", "picture_size"):
        knob(g, name)
    g.add_argument("-o", "--output-dir", type=Path, help="folder for the grid (default: the current folder)")
    g.add_argument("--overwrite", action="store_true", help=f"replace an existing {GRID_NAME}")
    p.add_argument("--json", action="store_true", help="print the figures as JSON (key grid: the grid's path)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m advdm", description="Protect images from diffusion-model mimicry (AdvDM and family).")
    parser.add_argument("--version", action="version", version=f"advdm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("protect", help="protect images; writes <name>_protected.png to the output folder")
    p.add_argument("images", nargs="+", type=Path, help="image files or folders of images")
    p.add_argument("-o", "--output-dir", type=Path, required=True)
    _model_args(p)
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS), help="defaults for the knobs below: "
                   + "; ".join(f"{k}: {v}" for k, v in PRESETS.items()))
    p.add_argument("--method", default=PROTECT["method"].default, choices=METHODS,
                   help=PROTECT["method"].help)
    p.add_argument("--epsilon", type=float, help="L_inf budget in /255 (0-255)")
    p.add_argument("--budget", default=PROTECT["budget"].default, choices=PROTECT["budget"].choices,
                   help=PROTECT["budget"].help + "; the saved file keeps both bounds")
    p.add_argument("--step-size", type=float, help="PGD step in /255")
    p.add_argument("--steps", type=int)
    p.add_argument("--samples", type=int, help="Monte-Carlo (t, noise) samples per step, batched")
    p.add_argument("--t-range", type=float, nargs=2, metavar=("MIN", "MAX"), help="timestep range as fractions 0-1")
    p.add_argument("--seed", type=int, default=PROTECT["seed"].default)
    p.add_argument("--mask", type=Path, help="grayscale image of the input's size: white = protect, black = keep")
    p.add_argument("--sds-ascend", action="store_true", help="SDS(+): ascend the loss (default SDS(-) descends)")
    p.add_argument("--low-memory", action="store_true", help="recompute the VAE encoder in backward instead of keeping "
                   "it through the denoiser's pass: lower peak memory, one more encoder forward per step")
    p.add_argument("--flow-timesteps", choices=FLOW_TIMESTEPS,
                   help="SD3 / Flux: timestep distribution of the attack (default: the model's training one, logit-normal)")
    p.add_argument("--flow-shift", type=float, help="SD3 / Flux: timestep shift (default: the model's)")
    f = p.add_argument_group("fine-tune-aware methods", "anti-dreambooth (ASPL) and mist-v2 attack through a LoRA "
                             "that keeps fine-tuning on the image, as a mimic's would; the model is unchanged after")
    f.add_argument("--surrogate", action=argparse.BooleanOptionalAction, default=None,
                   help="attack through the LoRA surrogate (default: on for anti-dreambooth and mist-v2 only)")
    for name, kind in (("surrogate_every", int), ("surrogate_steps", int), ("surrogate_rank", int),
                       ("surrogate_lr", float)):
        knob = PROTECT[name]
        f.add_argument("--" + name.replace("_", "-"), type=kind, help=f"{knob.help} (default {knob.default:g})")
    v = p.add_argument_group("views and robustness", "what the model sees each step; the output keeps the native size")
    v.add_argument("--view", choices=VIEWS, default=PROTECT["view"].default,
                   help="full: whole image at native size; train: the random crops and aspect buckets a fine-tuning "
                        "pipeline makes, scaled to the training resolution (memory set by it, not the image); tiled: "
                        "native-size tiles covering the image; auto: full up to 1.5x the training size, else train")
    v.add_argument("--resolution", type=int, help="training resolution the views are scaled to (default: the model's)")
    v.add_argument("--views-per-step", type=int, help="train views per step, gradients summed")
    v.add_argument("--flip", action="store_true", help="random horizontal flips of the train views")
    v.add_argument("--eot-jpeg", type=int, metavar="QUALITY", help="also optimise through a differentiable JPEG "
                   "of quality QUALITY..95, so protection survives re-compression")
    v.add_argument("--eot-blur", type=float, metavar="SIGMA", help="also through Gaussian blur up to SIGMA px")
    v.add_argument("--eot-noise", type=float, metavar="STD", help="also through Gaussian noise up to STD/255")
    p.add_argument("--suffix", default="_protected")
    p.add_argument("--format", default="png", choices=["png", "jpg", "jpeg", "webp"],
                   help="output format; lossy formats wash the protection out, so PNG is written anyway")
    p.add_argument("--first-frame", action="store_true", help="protect the first frame of animated images "
                   "(otherwise they are refused)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (never an input)")
    p.add_argument("--measure", action="store_true", help="measure each result against its original")

    m = sub.add_parser("measure", help="diffusion loss on original vs protected, with a same-budget noise control")
    m.add_argument("original", type=Path)
    m.add_argument("protected", type=Path)
    _model_args(m)
    m.add_argument("--samples", type=int, default=SAMPLES, help="fixed (t, noise) draws to start with; "
                   "doubled until the protected-minus-noise interval is narrow enough")
    m.add_argument("--max-samples", type=int, default=MAX_SAMPLES, help="at most this many draws")
    m.add_argument("--precision", type=float, default=PRECISION, help="stop drawing once the 95%% interval of "
                   "protected minus noise is at most this wide on each side (in units of the clean loss)")
    m.add_argument("--seed", type=int, default=MEASURE["seed"].default)
    m.add_argument("--json", action="store_true", help="print the figures as JSON")
    m.add_argument("--view", choices=MEASURE["view"].choices, default=MEASURE["view"].default,
                   help=MEASURE["view"].help + " (default %(default)s)")
    m.add_argument("--resolution", type=int, help="the mimic's training resolution: what auto scores at, and where "
                   "--robustness resizes and crops to (default: the model's)")
    m.add_argument("--change-map", action="store_true", help="write where the change sits, amplified (brightest = "
                   "the largest change), as <protected>_change.png next to the protected file")
    m.add_argument("--robustness", action="store_true", help="also the gains after what a mimic does: "
                   "downscale to the training resolution and 512/1024, centre and random crops, JPEG 95/85/75, "
                   "light blur, and the cleanups known to strip protections (DiffPure with this model, noisy "
                   "upscale, bilateral + guided filtering)")
    i = m.add_argument_group("img2img", "the paper's style-transfer threat: the clean, protected and same-budget noise "
                             "images edited with the same seeds; how far the protected edit lands from the clean one. "
                             f"The edits are written side by side as <protected>{IMG2IMG_PICTURE}")
    i.add_argument("--img2img", action="store_true", help="run the img2img (SDEdit) check")
    i.add_argument("--img2img-strengths", default=strengths_text(),
                   help=IMG2IMG["strengths"].help + ", comma-separated (default %(default)s)")
    i.add_argument("--img2img-seeds", type=int, default=IMG2IMG["seeds"].default,
                   help=IMG2IMG["seeds"].help + " (default %(default)s)")
    i.add_argument("--img2img-steps", type=int, default=IMG2IMG["steps"].default,
                   help=IMG2IMG["steps"].help + " (default %(default)s)")
    m.add_argument("--overwrite", action="store_true", help="replace the img2img picture or change map written before (never an input)")

    _mimicry_args(sub)
    sub.add_parser("selftest", help="protect a generated image with builtin:tiny and check the result")
    return parser


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"protect": cmd_protect, "measure": cmd_measure, "mimicry": cmd_mimicry,
                "selftest": cmd_selftest}[args.command](args)
    except (CheckpointError, ImageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; files already written are complete, nothing half-written was kept", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """diffusers / transformers warn about dtype casts and missing accelerate on every load;
    a command-line user cannot act on those."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


def _load(args, device=None, keep_text: bool = False) -> "torch.nn.Module":
    _quiet_libraries()
    device = pick_device(args.device) if device is None else device
    if args.checkpoint.startswith("builtin:"):
        print(f"warning: {builtin.WARNING}", file=sys.stderr)
    return load_model(args.checkpoint, device, pick_dtype(args.dtype, device), args.prompt, args.prediction,
                      keep_text=keep_text)


def _config(args) -> ProtectConfig:
    names = ("epsilon", "step_size", "steps", "samples", "resolution", "views_per_step", "eot_jpeg", "eot_blur", "eot_noise",
             "flow_timesteps", "flow_shift", "surrogate", "surrogate_every", "surrogate_steps", "surrogate_rank",
             "surrogate_lr")
    knobs = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.t_range:
        knobs["t_min"], knobs["t_max"] = args.t_range
    return ProtectConfig.preset(args.preset, method=args.method, budget=args.budget, seed=args.seed, sds_ascend=args.sds_ascend,
                                view=args.view, flip=args.flip, low_memory=args.low_memory, **knobs)


def _mask_for(path: Optional[Path], size) -> Optional[torch.Tensor]:
    if path is None:
        return None
    mask = load_image(path).rgb.mean(dim=1, keepdim=True)
    if tuple(mask.shape[-2:]) != tuple(size):
        raise ImageError(f"{path}: mask is {mask.shape[-1]}x{mask.shape[-2]}, the image {size[1]}x{size[0]}")
    return mask


def _progress_bar(name: str, total: int):
    bar = tqdm(total=total, desc=name, unit="step", leave=True, file=sys.stderr)

    def progress(step, total, current):
        bar.update(step - bar.n)
        if step == total:
            bar.close()

    return progress


def protect_file(model, source: Path, out: Path, config: ProtectConfig, *, mask_path=None, overwrite=False,
                 checkpoint="", first_frame=False, label="", input_sha256=None, config_sha256=None):
    """Protect one file into out; returns (original, protected) tensors.

    With input_sha256 the attack's seed is image_seed(config.seed, input_sha256); both hashes go
    into the PNG's metadata, so a run killed before it recorded the output knows it on re-run."""
    image = load_image(source, first_frame=first_frame)
    for note in image.notes:
        print(f"{source}: {note}", file=sys.stderr)
    mask = _mask_for(mask_path, image.rgb.shape[-2:])
    if out.exists() and not overwrite:
        raise ImageError(f"{out}: already exists, not made from this input with these settings "
                         "(pass --overwrite to replace it)")
    provenance = {}
    if input_sha256 is not None:
        provenance = {"image_seed": image_seed(config.seed, input_sha256), "input_sha256": input_sha256,
                      "config_sha256": config_sha256}
    attack = dataclasses.replace(config, seed=provenance["image_seed"]) if provenance else config
    protected = protect(model, image.rgb, attack, mask=mask, progress=_progress_bar(label + source.name, config.progress_steps),
                        levels=image.levels)
    metadata = {"advdm": json.dumps({"version": __version__, "checkpoint": checkpoint, **config.as_dict(), **provenance})}
    save_png(out, protected, alpha=image.alpha, levels=image.levels, metadata=metadata, icc_profile=image.icc_profile,
             overwrite=overwrite, source=source)
    _check_budget(out, image.rgb, config)
    return image.rgb, protected


def _check_budget(path: Path, original: torch.Tensor, config: ProtectConfig) -> None:
    """Read the saved file back: the budget (epsilon, and the per-pixel bound) must hold on what is on disk."""
    saved = load_image(path).rgb
    bound = pixel_bound(original, config.epsilon, config.budget)
    if saved.shape != original.shape or ((saved - original).abs() * 255 - bound).max().item() > 1e-3:
        path.unlink(missing_ok=True)
        raise ImageError(f"{path}: saved file breaks the budget or size; removed (please report this bug)")


def cmd_protect(args) -> int:
    """Protect every input once, alone or as one rank of a torchrun launch (advdm.batch.ranks): the ranks
    agree on what is left to do, each does its share, rank 0 sums up."""
    config = _config(args)
    if args.mask is not None and not args.mask.is_file():
        raise ImageError(f"{args.mask}: no such mask file")
    items = find_work(args.images, args.output_dir, args.suffix)
    if not items:
        print("error: no images found", file=sys.stderr)
        return 2
    ranks = Ranks.from_env()
    # torchrun passes a preemption on as SIGTERM: stop as on Ctrl-C, so the image being saved
    # leaves no temporary file behind (a re-run does it again)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    finished = False
    try:
        code = _protect_shared(args, config, items, ranks)
        finished = True
        return code
    finally:
        signal.signal(signal.SIGTERM, previous)
        ranks.close(finished)


def _protect_shared(args, config: ProtectConfig, items: list, ranks: Ranks) -> int:
    if args.format != "png" and ranks.rank == 0:
        print(f"warning: {warn_if_lossy(Path('output.' + args.format))}", file=sys.stderr)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    device = ranks.device(args.device)
    config_hash = config_sha256(_pixel_settings(args, config, pick_dtype(args.dtype, device)))
    hashes = ranks.map_shared(input_hash, items)  # each rank reads only its share of the inputs
    if ranks.rank == 0:
        todo, done_before, recovered = plan(items, hashes, config_hash, args.output_dir)
        for record in recovered:
            manifest.append(manifest_path(args.output_dir, 0), {**record, "rank": 0})
    todo, done_before = ranks.from_rank0((todo, done_before) if ranks.rank == 0 else None)
    mine = ranks.share(todo)
    failed = _protect_tasks(args, config, mine, ranks, device) if mine else []
    failed = [name for share in ranks.gather(failed) for name in share]
    if ranks.rank == 0:
        _summary(len(items), done_before, len(todo), failed, args.output_dir)
    return 1 if failed else 0


def _pixel_settings(args, config: ProtectConfig, dtype) -> dict:
    """Everything that changes the pixels, for the configuration hash. Not the device: cuda:0 and
    cuda:3 (or CPUs) give the same image up to float rounding, which is not a reason to redo it."""
    return {"advdm": __version__, "protect": config.as_dict(), "checkpoint": checkpoint_fingerprint(args.checkpoint),
            "prompt": args.prompt, "prediction": args.prediction, "dtype": str(dtype), "first_frame": args.first_frame,
            "mask": file_sha256(args.mask) if args.mask else None}


def _protect_tasks(args, config: ProtectConfig, tasks: list, ranks: Ranks, device) -> list:
    """Do this rank's tasks, recording each in this rank's manifest; returns the failed inputs."""
    model = _load(args, device)
    record_to = manifest_path(args.output_dir, ranks.rank)
    failed = []
    for number, task in enumerate(tasks, 1):
        started = time.time()
        source, out = task.item.source, task.item.output
        try:
            if task.error:
                raise ImageError(task.error)
            out.parent.mkdir(parents=True, exist_ok=True)
            original, protected = protect_file(
                model, source, out, config, mask_path=args.mask, overwrite=args.overwrite,
                checkpoint=Path(args.checkpoint).name, first_frame=args.first_frame,
                label=f"{ranks.label}{number}/{len(tasks)} ", input_sha256=task.record["input_sha256"],
                config_sha256=task.record["config_sha256"])
        except ImageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            manifest.append(record_to, {**task.record, "status": "failed", "error": str(exc), "rank": ranks.rank})
            failed.append(str(source))
            continue
        seconds = time.time() - started
        manifest.append(record_to, {**task.record, "status": "done", "error": None, "rank": ranks.rank,
                                    "seconds": round(seconds, 3)})
        print(f"{ranks.label}{source} -> {out} ({seconds:.1f} s)")
        if args.measure:
            print(format_measurement(measure(model, original, protected, samples=MEASURE["samples"].default)))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return failed


def _summary(total: int, done_before: int, attempted: int, failed: list, output_dir: Path) -> None:
    print(f"{total} images: {attempted - len(failed)} protected now, {done_before} already done, {len(failed)} failed; "
          f"manifest {output_dir / manifest.PATTERN} (merged, the latest record of each input counts)")
    if failed:
        print(f"{len(failed)} of {total} images failed: {', '.join(failed)}", file=sys.stderr)


def cmd_measure(args) -> int:
    if not 2 <= args.samples <= args.max_samples:
        raise ValueError(f"--samples must be at least 2 and at most --max-samples ({args.max_samples}), got {args.samples}")
    if args.precision <= 0:
        raise ValueError(f"--precision must be positive, got {args.precision}")
    original, protected = load_image(args.original).rgb, load_image(args.protected).rgb
    if original.shape != protected.shape:
        raise ImageError(f"{args.protected}: size {protected.shape[-1]}x{protected.shape[-2]} differs from "
                         f"{args.original} ({original.shape[-1]}x{original.shape[-2]})")
    picture_path = None
    if args.img2img:
        strengths = parse_strengths(args.img2img_strengths, "--img2img-strengths")
        if args.img2img_seeds < 1 or args.img2img_steps < 1:
            raise ValueError(f"--img2img-seeds and --img2img-steps must be >= 1, got {args.img2img_seeds} and "
                             f"{args.img2img_steps}")
        picture_path = args.protected.with_name(args.protected.stem + IMG2IMG_PICTURE)
        if picture_path.exists() and not args.overwrite:  # before the work, not after
            raise ImageError(f"{picture_path}: already exists (pass --overwrite to replace it)")
    change_map = _change_map_path(args)  # refused before the measurement, not after
    model = _load(args)
    views = dict(view=args.view, resolution=args.resolution)
    draws = dict(samples=args.samples, max_samples=args.max_samples, precision=args.precision, seed=args.seed)
    with tqdm(desc=f"{args.protected.name}: measure", unit="draw", total=args.max_samples, file=sys.stderr) as bar:
        result = measure(model, original, protected, progress=lambda n, most: bar.update(n - bar.n), **draws, **views)
        bar.total = result["samples"]  # the interval was narrow before the cap: end the bar at what was used
        bar.refresh()
    if args.robustness:
        from .evaluation.robustness import format_robustness, robustness

        with tqdm(desc=f"{args.protected.name}: robustness", unit="transform", file=sys.stderr) as bar:
            def progress(done, total):
                bar.total = total
                bar.update(done - bar.n)

            result["robustness"] = robustness(model, original, protected, progress=progress, **draws, **views)
    if args.img2img:
        from .evaluation.img2img import format_img2img, img2img_check

        with tqdm(desc=f"{args.protected.name}: img2img", unit="step", file=sys.stderr) as bar:
            def progress(done, total):
                bar.total = total
                bar.update(done - bar.n)

            check = img2img_check(model, original, protected, strengths=strengths, seeds=args.img2img_seeds,
                                  steps=args.img2img_steps, seed=args.seed, progress=progress, **views)
        saved = str(save_png(picture_path, check.pop("picture"), overwrite=args.overwrite,
                             source=[args.original, args.protected]))
        for row in check["img2img"]:
            row["picture"] = saved
        result["img2img"] = check.pop("img2img")
        result["img2img_details"] = check
    if change_map is not None:
        result["change_map"] = str(_write_change_map(args, change_map, original, protected))
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_measurement(result))
        if args.robustness:
            print(format_robustness(result["robustness"]))
        if args.img2img:
            print(format_img2img({"img2img": result["img2img"], **result["img2img_details"]}))
            print(f"img2img edits (rows clean, protected, noise; columns the input, then each strength): {saved}")
        if change_map is not None:
            print(f"change map: {change_map}")
    return 0


def _change_map_path(args) -> Optional[Path]:
    if not args.change_map:
        return None
    path = args.protected.with_name(f"{args.protected.stem}_change.png")
    if path.exists() and not args.overwrite:
        raise ImageError(f"{path}: already exists (pass --overwrite to replace it)")
    return path


def _write_change_map(args, path: Path, original, protected) -> Path:
    from .evaluation.visibility import change_map

    return save_png(path, change_map(original, protected), overwrite=args.overwrite,
                    source=[args.original, args.protected])


def cmd_mimicry(args) -> int:
    from .evaluation.mimicry import config_from_options, format_mimicry, mimicry_check, split_for_held_out

    config = config_from_options({name: getattr(args, name) for name in (*MIMICRY, *MIMICS)},
                                 label=lambda name: "--" + name.replace("_", "-"))
    if len(args.protected) != len(args.train):
        raise ValueError(f"--train has {len(args.train)} images but --protected {len(args.protected)}: give one "
                         "protected copy per training image, in the same order")
    train = [load_image(p).rgb for p in args.train]
    protected = [load_image(p).rgb for p in args.protected]
    for a, b, x, y in zip(args.train, args.protected, train, protected):
        if x.shape != y.shape:
            raise ImageError(f"{b}: size {y.shape[-1]}x{y.shape[-2]} differs from {a} ({x.shape[-1]}x{x.shape[-2]})")
    grid_path = (args.output_dir or Path.cwd()) / GRID_NAME if args.pictures else None
    if grid_path is not None and grid_path.exists() and not args.overwrite:  # before hours of fine-tuning, not after
        raise ImageError(f"{grid_path}: already exists (pass --overwrite to replace it, or choose --output-dir)")
    model = _load(args, keep_text=config.mimic == "textual-inversion")
    note = ""
    if args.held_out:
        held = [load_image(p).rgb for p in args.held_out]
    else:  # one image (or no separate ones): train on left halves, hold the right halves out
        train, held, protected, note = split_for_held_out(train, protected, model.pixel_multiple)
    with tqdm(desc="mimicry: fine-tuning and pictures", unit="step", file=sys.stderr) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        result = mimicry_check(model, train, held, protected, config, progress=progress, held_out_note=note)
    grid = result.pop("grid")
    if grid is not None:
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        result["grid"] = str(save_png(grid_path, grid, overwrite=args.overwrite,
                                      source=[*args.train, *args.protected, *(args.held_out or [])]))
    else:
        result["grid"] = None
    result["train"] = [str(p) for p in args.train]
    result["protected"] = [str(p) for p in args.protected]
    result["held_out"] = [str(p) for p in args.held_out or []]
    print(json.dumps(result, indent=1) if args.json else format_mimicry(result))
    if grid is not None and not args.json:
        print(f"pictures: {result['grid']}")
    return 0


def cmd_selftest(args) -> int:
    """End to end on builtin:tiny: load, protect, save, read back, check budget, size and alpha."""
    import numpy as np
    from PIL import Image

    print(f"warning: {builtin.WARNING}", file=sys.stderr)
    _quiet_libraries()
    started = time.time()
    model = builtin.build("tiny")
    config = ProtectConfig(epsilon=8, steps=20)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "selftest.png"
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, (40, 52, 4), dtype=np.uint8)
        Image.fromarray(pixels, "RGBA").save(source)
        out = Path(tmp) / "out" / "selftest_protected.png"
        out.parent.mkdir()
        original, protected = protect_file(model, source, out, config, checkpoint="builtin:tiny")
        saved = np.asarray(Image.open(out))
        checks = {
            "size kept": saved.shape == pixels.shape,
            "alpha untouched": saved.shape == pixels.shape and (saved[..., 3] == pixels[..., 3]).all(),
            "budget holds on the saved file": np.abs(saved[..., :3].astype(int) - pixels[..., :3]).max() <= config.epsilon,
            "pixels changed": (saved[..., :3] != pixels[..., :3]).any(),
            "input untouched": (np.asarray(Image.open(source)) == pixels).all(),
        }
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    if not all(checks.values()):
        print("selftest FAILED", file=sys.stderr)
        return 1
    print(f"selftest passed in {time.time() - started:.1f} s (torch {torch.__version__}, device cpu)")
    return 0
