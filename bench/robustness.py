"""Robustness to a mimic's preprocessing, at the same budget:

  train      ours: "train" views (random crops + aspect buckets at R, backpropagated to native pixels)
  train+jpeg ours with JPEG expectation over transformations (quality drawn >= 75)
  native     naive PGD at native resolution ("tiled": every R x R tile each step)
  upsampled  the peers' way: craft at R (shorter side), upsample the perturbation

prints one table of loss gains (protected / clean) per transform, and the peak RSS of
"train" protection for a small and a large image (each in its own subprocess).

    python bench/robustness.py                 # builtin tiny model, 512 px image, R = 128
    python bench/robustness.py --size 256 --resolution 64 --steps 30
    python bench/robustness.py --memory-only

The builtin tiny model has random weights: this checks the mechanism, not the strength
on a real model.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def test_image(height, width, seed=0):
    """A smooth image with some texture, on the 8-bit grid."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(height, width), mode="bilinear")
    fine = torch.nn.functional.interpolate(torch.rand(1, 3, height // 8 + 1, width // 8 + 1, generator=g),
                                           size=(height, width), mode="bilinear")
    return ((0.85 * x + 0.15 * fine) * 255).round() / 255


def load(args):
    """--checkpoint (anything the command line loads, e.g. the trained test-bed) or builtin --model."""
    from advdm.models.checkpoints import load_model

    return load_model(args.checkpoint or f"builtin:{args.model}", torch.device("cpu"), torch.float32, args.prompt)


def load_image(path, size):
    """An image file, resized (bicubic) to size x size as a high-resolution original."""
    from PIL import Image

    from advdm.evaluation.robustness import from_pil

    return from_pil(Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC))


def memory_child(args):
    """Peak RSS (MB) of one protect() in this process."""
    from advdm import ProtectConfig, protect

    torch.set_num_threads(1)
    model = load(args)
    image = test_image(args.child_size, args.child_size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.time()
    protect(model, image, ProtectConfig(view=args.child_view, resolution=args.resolution, steps=args.memory_steps,
                                        epsilon=8, samples=1))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"size": args.child_size, "view": args.child_view, "peak_mb": peak, "before_mb": base,
                      "seconds": time.time() - t}))


def memory(args):
    rows = []
    for size in args.memory_sizes:
        cmd = [sys.executable, __file__, "--child-size", str(size), "--child-view", "train", "--model", args.model,
               "--memory-steps", str(args.memory_steps), "--prompt", args.prompt]
        if args.checkpoint:
            cmd += ["--checkpoint", args.checkpoint]
        if args.resolution:
            cmd += ["--resolution", str(args.resolution)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    print("\npeak RSS of 'train' protection (one subprocess each; model loaded before 'before'):")
    for r in rows:
        print(f"  {r['size']:>5} x {r['size']:<5} peak {r['peak_mb']:7.0f} MB  (before protect {r['before_mb']:6.0f} MB,"
              f" {r['seconds']:.1f} s for {args.memory_steps} steps)")
    print(f"  ratio largest / smallest: {rows[-1]['peak_mb'] / rows[0]['peak_mb']:.2f}")
    return rows


def robustness_table(args):
    from advdm import ProtectConfig, protect
    from advdm.evaluation.robustness import format_robustness, protect_upsampled, robustness

    torch.set_num_threads(args.threads)
    model = load(args)
    r = args.resolution or model.train_resolution
    image = load_image(args.image, args.size) if args.image else test_image(args.size, args.size)
    cfg = dict(epsilon=args.epsilon, step_size=args.step_size, steps=args.steps, samples=args.samples, seed=args.seed,
               resolution=r)
    runs = {
        "train": lambda: protect(model, image, ProtectConfig(view="train", **cfg)),
        "train+jpeg": lambda: protect(model, image, ProtectConfig(view="train", eot_jpeg=75, eot_prob=0.75, **cfg)),
        "native": lambda: protect(model, image, ProtectConfig(view=args.native_view, **cfg)),
        "upsampled": lambda: protect_upsampled(model, image, ProtectConfig(**cfg), r),
    }
    columns = {}
    for label, run in runs.items():
        t = time.time()
        out = run()
        assert out.shape == image.shape
        assert ((out - image).abs() * 255).round().max() <= args.epsilon
        t1 = time.time()
        columns[label] = robustness(model, image, out, samples=args.eval_samples, max_samples=args.eval_samples,
                                    seed=args.eval_seed, resolution=r)
        print(f"{label:<11} crafted in {t1 - t:6.1f} s, evaluated in {time.time() - t1:6.1f} s", flush=True)
    print(f"\nloss gain (protected / clean) after each transform; {model.name}, {args.size}x{args.size} image, "
          f"R = {r}, budget {args.epsilon:g}/255, {args.steps} steps x {args.samples} samples, "
          f"{args.eval_samples} fixed eval samples (seed {args.eval_seed}); 'noise' = same-budget uniform noise")
    print(format_robustness(None, columns))
    return columns


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="builtin model name (random weights)")
    p.add_argument("--checkpoint", help="instead of --model: a checkpoint the command line loads (e.g. testbed/model)")
    p.add_argument("--prompt", default="a painting", help="conditioning prompt for --checkpoint")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--image", help="an image file (resized to --size) instead of the generated test image")
    p.add_argument("--resolution", type=int, default=None, help="R (default: the model's training resolution)")
    p.add_argument("--epsilon", type=float, default=16)
    p.add_argument("--step-size", type=float, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-samples", type=int, default=64)
    p.add_argument("--eval-seed", type=int, default=999)
    p.add_argument("--native-view", default="tiled", choices=["tiled", "full"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory-only", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--memory-sizes", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--memory-steps", type=int, default=3)
    p.add_argument("--child-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-view", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    if args.child_size:
        return memory_child(args)
    if not args.memory_only:
        robustness_table(args)
    if not args.no_memory:
        memory(args)


if __name__ == "__main__":
    main()
