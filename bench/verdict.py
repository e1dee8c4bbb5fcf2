"""Does the measurement's verdict fire where it should, and only there? On the trained
test-bed (testbed/model): for each seed, a held-out style image protected with AdvDM, and
the same image with same-budget uniform noise passed as if it were the protected one; both
measured with `advdm.evaluation.measure` (paired draws, 95% intervals). Then, for one seed,
the full robustness table, purifications included.

    python bench/verdict.py                       # seeds 0-4, 8/255, 50 steps
    python bench/verdict.py --seeds 0 1 --steps 20 --no-robustness
    python bench/verdict.py --checkpoint builtin:tiny --size 32   # a random-weight model

Prints text tables; --json FILE keeps the raw figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "testbed"))


def image_for(seed: int, size: int):
    """A held-out style image of the test-bed (never seen in its training), size x size."""
    import styles

    x = styles.batch(styles.HELD_OUT, [5000 + seed])
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return (x * 255).round() / 255


def row(label, seed, m):
    return (f"{seed:>4}  {label:<22} x{m['gain']:.3f} [{m['gain_low']:.3f}, {m['gain_high']:.3f}]  "
            f"x{m['gain_noise']:.3f} [{m['gain_noise_low']:.3f}, {m['gain_noise_high']:.3f}]  "
            f"{m['gain_over_noise']:+.3f} [{m['gain_over_noise_low']:+.3f}, {m['gain_over_noise_high']:+.3f}]  "
            f"{m['samples']:>5}  {str(m['protects']):<8}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(ROOT / "testbed" / "model"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--epsilon", type=float, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--no-robustness", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from advdm.attack.pgd import ProtectConfig, protect
    from advdm.models.checkpoints import load_model
    from advdm.evaluation.measure import measure, noise_control
    from advdm.evaluation.robustness import format_robustness, robustness

    model = load_model(args.checkpoint, torch.device("cpu"), torch.float32)
    print(f"{model.name}: AdvDM {args.epsilon:g}/255, {args.steps} steps, {args.size} px; "
          "noise-as-protected = same-budget uniform noise (its own seed) passed as the protected image")
    print(f"{'seed':>4}  {'image':<22} {'gain [95% CI]':<23} {'noise gain [95% CI]':<23} "
          f"{'protected - noise':<24} {'draws':>5}  protects")
    raw, first = [], None
    for seed in args.seeds:
        clean = image_for(seed, args.size)
        t = time.time()
        protected = protect(model, clean, ProtectConfig(epsilon=args.epsilon, steps=args.steps, seed=seed))
        crafted = time.time() - t
        decoy = noise_control(clean, args.epsilon, seed=1000 + seed)
        figures = {"advdm": measure(model, clean, protected, seed=seed),
                   "noise-as-protected": measure(model, clean, decoy, seed=seed)}
        for label, m in figures.items():
            print(row(label, seed, m), flush=True)
        raw.append({"seed": seed, "crafted_s": crafted, **figures})
        first = first or (clean, protected)
    counts = {label: sum(r[label]["protects"] for r in raw) for label in ("advdm", "noise-as-protected")}
    print(f"protects: AdvDM in {counts['advdm']} of {len(raw)} seeds, noise-as-protected in "
          f"{counts['noise-as-protected']} of {len(raw)}")
    result = {"model": model.name, "args": {k: str(v) for k, v in vars(args).items()}, "seeds": raw}
    if not args.no_robustness:
        t = time.time()
        table = robustness(model, *first, seed=args.seeds[0])
        print(f"\nrobustness, seed {args.seeds[0]} ({time.time() - t:.0f} s):\n{format_robustness(table)}")
        result["robustness"] = table
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
