"""The perceptual budget against the uniform one, at equal visibility and at equal effect
(issue 25), on the trained test-bed (testbed/model).

Images: the held-out 'mosaic' style of the test-bed (testbed/styles.py, new images per seed)
and generated natural-looking ones (tests/sample_images.py: a gradient sky over a flat wall and
a textured field; half smooth gradient, half texture). For every (image, seed):

1. uniform AdvDM at --epsilon (the `fast` preset: 30 PGD steps of 1/255);
2. for every budget map tried (--textures: the JND model's texture-masking strength), the
   perceptual AdvDM with the bound min(--cap, k x JND), with k found by secant search so that
   (a) its SSIM (as `measure` computes it) is within 0.005 of the uniform result's, and again so
   that its MS-SSIM is; (b) its gain over noise matches the uniform one's (secant on the two
   points of (a), then one run: its similarity, interpolated from the runs, beside it);
3. each result's diffusion-loss gain beyond a same-budget noise control (measure's paired
   draws, `--draws` of them, 4 noise images): uniform noise within the same bound, per pixel
   for the perceptual budget (uniform +-epsilon for the uniform one).

The table: mean gain over noise of each budget with a 95% interval over the (image, seed)
units, their ratio (delta method, Student's t), and on the half-and-half image the mean
change on the flat half over that on the textured half.

    OMP_NUM_THREADS=1 python bench/budget.py --seeds 5 --json bench/results/budget.json
    python bench/budget.py --quick          # one seed, two images, one map: a smoke run
    python bench/budget.py --render bench/results/budget.json
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
sys.path.insert(0, str(ROOT / "tests"))

import sample_images  # noqa: E402
import styles  # noqa: E402

from advdm.attack import budget as budget_module  # noqa: E402
from advdm.attack import pgd  # noqa: E402
from advdm.attack.pgd import ProtectConfig, protect, quantize  # noqa: E402
from advdm.evaluation.measure import DrawLosses, paired_figures, ssim  # noqa: E402
from advdm.evaluation.stats import ratio_across_units  # noqa: E402
from advdm.evaluation.visibility import ms_ssim  # noqa: E402
from advdm.models.checkpoints import load_model  # noqa: E402

TOLERANCE = 0.005  # |SSIM (MS-SSIM) difference| accepted as equal


def images_for(seed: int, testbed: int, natural: int) -> list:
    """(name, (1, 3, 64, 64)) for one seed: held-out-style test-bed images, then generated ones."""
    out = [(f"mosaic-{seed}-{j}", x[None]) for j, x in
           enumerate(styles.batch(styles.HELD_OUT, range(10000 + 100 * seed, 10000 + 100 * seed + testbed)))]
    makers = [("half", sample_images.half_flat_half_texture), ("scene", sample_images.natural_scene)]
    for j in range(natural):
        name, make = makers[j % len(makers)]
        out.append((f"{name}-{seed}-{j}", make(64, 64, seed=1000 * seed + j)))
    return out


class Bench:
    def __init__(self, model, args):
        self.model, self.args = model, args

    def attack(self, x, seed, bound=None):
        """Uniform AdvDM (bound None) or AdvDM within a per-pixel bound (1/255)."""
        cap = self.args.epsilon if bound is None else float(bound.max())
        config = ProtectConfig.preset("fast", epsilon=max(cap, 1.0), steps=self.args.steps, seed=seed,
                                      budget="uniform" if bound is None else "perceptual")
        real = pgd.pixel_bound
        if bound is not None:  # the bench's own map in place of the product's (a scaled JND)
            pgd.pixel_bound = lambda image, epsilon, budget: bound
        try:
            return protect(self.model, x, config)
        finally:
            pgd.pixel_bound = real

    def gain(self, x, y, bound, seed) -> dict:
        """y's loss gain beyond noise of the same (per-pixel) bound, with its interval."""
        def noise(j):
            g = torch.Generator().manual_seed(7919 * j + 12345 + seed)
            b = torch.as_tensor(bound, dtype=torch.float32)
            return quantize((x + (torch.rand(x.shape, generator=g) * 2 - 1) * b / 255).clamp(0, 1), x,
                            b if b.dim() else float(b))

        score = lambda im: DrawLosses(self.model, im, seed).losses  # noqa: E731
        f = paired_figures(score(x), score(y), [score(noise(j)) for j in range(4)],
                           samples=self.args.draws, max_samples=self.args.draws)
        return {k: f[k] for k in ("gain_over_noise", "gain_over_noise_low", "gain_over_noise_high")}

    def point(self, x, seed, bound, name: str) -> dict:
        """The attack's result within bound (None: uniform) and its visibility figures; the
        result itself under "y", for gain()."""
        y = self.attack(x, seed, bound)
        change = (y - x).abs().mean(1)[0] * 255
        p = {"ssim": ssim(x, y), "ms_ssim": ms_ssim(x, y)[0], "mean_change": change.mean().item(),
             "linf": change.max().item(), "y": y}
        if name.startswith("half"):
            half = change.shape[-1] // 2
            p["flat_over_texture"] = change[:, :half].mean().item() / change[:, half:].mean().item()
        return p

    def with_gain(self, x, seed, bound, p: dict) -> dict:
        """The figures of a point with its gain beyond noise of the same bound (without "y")."""
        figures = {k: v for k, v in p.items() if k != "y"}
        return {**figures, **self.gain(x, p["y"], self.args.epsilon if bound is None else bound, seed)}


def secant(f, target: float, k0: float, k1: float, tries: int, tolerance: float):
    """k with f(k) within tolerance of target, f decreasing in k; returns (k, f(k), points)."""
    points = {}

    def at(k):
        if k not in points:
            points[k] = f(k)
        return points[k]

    a, b = k0, k1
    for _ in range(tries):
        fa, fb = at(a), at(b)
        if abs(fb - target) <= tolerance:
            break
        if fa == fb:
            b = b * 1.5 if fb > target else b / 1.5
            continue
        nxt = b + (target - fb) * (b - a) / (fb - fa)
        a, b = b, float(min(max(nxt, b / 3, 0.05), b * 3))
    best = min(points, key=lambda k: abs(points[k] - target))
    return best, points[best], points


def run_unit(bench: Bench, name: str, x, seed: int, textures, log) -> dict:
    args = bench.args
    started = time.time()
    u = bench.with_gain(x, seed, None, bench.point(x, seed, None, name))
    unit = {"image": name, "seed": seed, "uniform": u}
    for texture in textures:
        budget_module.TEXTURE = texture
        base = budget_module.jnd(x)
        bound = lambda k: (base * k).clamp(max=args.cap)  # noqa: E731
        runs = {}  # k -> point: every attack once

        def run(k):
            if k not in runs:
                runs[k] = bench.point(x, seed, bound(k), name)
            return runs[k]

        out = {}
        for metric in ("ssim", "ms_ssim"):  # (a) equal visibility
            k, _, _ = secant(lambda k: run(k)[metric], u[metric], 1.0, 0.7, args.tries, TOLERANCE)
            out[f"at_{metric}"] = {**bench.with_gain(x, seed, bound(k), run(k)), "k": k,
                                   "mean_bound": bound(k).mean().item()}
        # (b) equal gain: the secant through the two equal-visibility points, one more run
        (k1, p1), (k2, p2) = ((out[m]["k"], out[m]) for m in ("at_ssim", "at_ms_ssim"))
        g1, g2, target = p1["gain_over_noise"], p2["gain_over_noise"], u["gain_over_noise"]
        kg = k1 + (target - g1) * (k2 - k1) / (g2 - g1) if k1 != k2 and abs(g2 - g1) > 1e-6 else k1 * target / max(g1, 1e-6)
        kg = float(min(max(kg, k1 / 4), k1 * 4))
        out["at_gain"] = {**bench.with_gain(x, seed, bound(kg), run(kg)), "k": kg, "mean_bound": bound(kg).mean().item()}
        unit[f"perceptual-{texture:g}"] = out
        runs.clear()
    parts = [f"T{t:g}: " + ", ".join(f"at {m} k {unit[f'perceptual-{t:g}'][f'at_{m}']['k']:.2f} SSIM "
                                     f"{unit[f'perceptual-{t:g}'][f'at_{m}']['ssim']:.4f} MS-SSIM "
                                     f"{unit[f'perceptual-{t:g}'][f'at_{m}']['ms_ssim']:.4f} gain "
                                     f"{unit[f'perceptual-{t:g}'][f'at_{m}']['gain_over_noise']:+.3f}"
                                     for m in ("ssim", "ms_ssim", "gain")) for t in textures]
    log(f"{name} seed {seed}: uniform SSIM {u['ssim']:.4f} MS-SSIM {u['ms_ssim']:.4f} gain {u['gain_over_noise']:+.3f}; "
        + "; ".join(parts) + f" ({time.time() - started:.0f} s)")
    return unit


def _mean_ci(values):
    v = torch.tensor(values, dtype=torch.float64)
    r = ratio_across_units(v, torch.ones_like(v))
    return r.estimate, r.low, r.high


def render(results: dict) -> str:
    units = results["units"]
    maps = [k for k in units[0] if k.startswith("perceptual-")]
    lines = [f"# test-bed {results['model']}; uniform AdvDM at {results['epsilon']:g}/255, perceptual cap "
             f"{results['cap']:g}/255, {results['steps']} PGD steps; {results['draws']} paired draws, 4 noise images; "
             f"{len(units)} (image, seed) units, seeds {results['seeds']}",
             "",
             "| images | budget | matched on | SSIM | MS-SSIM | gain over noise (95% CI over units) | x uniform (95% CI) | k | flat/texture change |",
             "|---|---|---|---|---|---|---|---|---|"]
    groups = {"all": units, "test-bed mosaic": [u for u in units if u["image"].startswith("mosaic")],
              "generated": [u for u in units if not u["image"].startswith("mosaic")]}

    def flat(us, get):
        vals = [get(u)["flat_over_texture"] for u in us if "flat_over_texture" in get(u)]
        return f"{sum(vals) / len(vals):.2f} (n={len(vals)})" if vals else ""

    for group, us in groups.items():
        if len(us) < 2:
            continue
        uni = [u["uniform"] for u in us]
        g, lo, hi = _mean_ci([p["gain_over_noise"] for p in uni])
        lines.append(f"| {group} (n={len(us)}) | uniform | - | {_avg(uni, 'ssim'):.4f} | {_avg(uni, 'ms_ssim'):.4f} | "
                     f"{g:+.3f} ({lo:+.3f} to {hi:+.3f}) | 1 | - | {flat(us, lambda u: u['uniform'])} |")
        for m in maps:
            for at, label in (("at_ssim", "SSIM"), ("at_ms_ssim", "MS-SSIM"), ("at_gain", "gain")):
                ps = [u[m][at] for u in us]
                g, lo, hi = _mean_ci([p["gain_over_noise"] for p in ps])
                r = ratio_across_units(torch.tensor([p["gain_over_noise"] for p in ps], dtype=torch.float64),
                                       torch.tensor([p["gain_over_noise"] for p in uni], dtype=torch.float64))
                lines.append(f"| | {m.replace('perceptual-', 'perceptual T')} | {label} | {_avg(ps, 'ssim'):.4f} | "
                             f"{_avg(ps, 'ms_ssim'):.4f} | {g:+.3f} ({lo:+.3f} to {hi:+.3f}) | "
                             f"{r.estimate:.2f} ({r.low:.2f}-{r.high:.2f}) | {_avg(ps, 'k'):.2f} | "
                             f"{flat(us, lambda u: u[m][at])} |")
    off = [abs(u[m]["at_ssim"]["ssim"] - u["uniform"]["ssim"]) for u in units for m in maps]
    off_ms = [abs(u[m]["at_ms_ssim"]["ms_ssim"] - u["uniform"]["ms_ssim"]) for u in units for m in maps]
    lines += ["", f"largest |SSIM difference| at the SSIM-matched points {max(off):.4f}, |MS-SSIM difference| at the "
                  f"MS-SSIM-matched points {max(off_ms):.4f} (tolerance {TOLERANCE}); wall time {results['seconds']:.0f} s"]
    return "\n".join(lines)


def _avg(points, key):
    return sum(p[key] for p in points) / len(points)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--testbed-images", type=int, default=2, help="held-out-style test-bed images per seed")
    p.add_argument("--natural-images", type=int, default=2, help="generated images per seed (half-and-half, scene)")
    p.add_argument("--epsilon", type=float, default=8.0, help="the uniform budget, /255")
    p.add_argument("--cap", type=float, default=32.0, help="the perceptual bound's cap (its epsilon), /255")
    p.add_argument("--textures", default=str(budget_module.TEXTURE), help="texture-masking strengths tried (maps)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--draws", type=int, default=64)
    p.add_argument("--tries", type=int, default=5, help="secant evaluations per match")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--checkpoint", default=str(ROOT / "testbed" / "model"), help="builtin:tiny checks the script runs")
    p.add_argument("--json", type=Path)
    p.add_argument("--render", type=Path)
    args = p.parse_args(argv)
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return
    if args.quick:
        args.seeds, args.testbed_images, args.natural_images, args.draws = 1, 1, 1, 32
    torch.set_num_threads(1)
    textures = [float(t) for t in args.textures.split(",")]
    model = load_model(args.checkpoint, torch.device("cpu"), torch.float32)
    bench, units, started = Bench(model, args), [], time.time()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    for seed in range(args.seeds):
        for name, x in images_for(seed, args.testbed_images, args.natural_images):
            units.append(run_unit(bench, name, x, seed, textures, log))
            results = {"model": args.checkpoint, "epsilon": args.epsilon, "cap": args.cap, "steps": args.steps,
                       "draws": args.draws, "seeds": sorted({u["seed"] for u in units}),
                       "seconds": time.time() - started, "units": units}
            if args.json:  # after every unit: a run stopped early still leaves its figures
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=1))
    print(render(results))


if __name__ == "__main__":
    main()
