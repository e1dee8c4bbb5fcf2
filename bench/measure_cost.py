"""What a measurement costs as the image grows: `measure` (defaults: view auto) on a small
and a large image, time and peak memory, each size in a fresh subprocess so peaks do not mix.

    python bench/measure_cost.py                          # the test-bed: 256 and 1024 px (4x and 16x its 64 px)
    python bench/measure_cost.py --model sd15 --sizes 512,2048 --draws 8   # SD1.5's architecture, random weights

With `auto`, an image up to 1.5x the training resolution is scored whole and a larger one
by 8 training views at that resolution, taking turns by blocks of draws, so a draw costs the
same at any size; the ratios say whether that holds. The image figures (PSNR, SSIM, MS-SSIM)
are judged at the size people look at, so they grow with the pixels: the table times them
apart (again, after the measurement). Times are the process's CPU time, which a machine shared
with other jobs leaves as it is (wall time beside it; on CUDA use wall time alone, on an idle
machine). Peak memory is the process's peak RSS (the GPU's
peak allocation on CUDA) above what the loaded model holds, and in total. --view full shows
what the old native-size measurement cost. Draws are fixed (samples = max_samples), so every
size does the same work. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for p in (str(ROOT), str(BENCH), str(ROOT / "testbed")):
    if p not in sys.path:
        sys.path.insert(0, p)


def _load(spec):
    import torch

    device = torch.device(spec["device"])
    if spec["model"] == "sd15":
        import speed

        speed.make_weights(spec["cache"])
        return speed.build(device, "fp32", spec["cache"])[0], device
    from advdm.models.checkpoints import load_model

    return load_model(str(ROOT / "testbed" / "model"), device, torch.float32), device


def child(spec: dict) -> dict:
    import torch

    import speed
    from advdm.evaluation import visibility
    from advdm.evaluation.measure import measure, noise_control, psnr, ssim

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    model, device = _load(spec)
    image = speed._image(spec["size"], torch.device("cpu"), seed=1).float()
    protected = noise_control(image, 8, seed=2)  # the cost does not depend on what the pixels hold
    measure(model, image[..., :64, :64], protected[..., :64, :64], samples=4, max_samples=4)  # warm-up
    base = speed._release_and_reset_peak(device)
    t0, c0 = time.perf_counter(), time.process_time()
    m = measure(model, image, protected, samples=spec["draws"], max_samples=spec["draws"], view=spec["view"])
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = speed._peak(device)
    c0 = time.process_time()  # the image figures again, alone: the part that is judged at native size
    psnr(image, protected), ssim(image, protected), visibility.figures(image, protected, device)
    return {"size": spec["size"], "seconds": seconds, "cpu_seconds": cpu, "figures_cpu_seconds": time.process_time() - c0,
            "peak_bytes": peak, "base_bytes": base, "scored": m["scored"], "draws": m["samples"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("testbed", "sd15"), default="testbed")
    p.add_argument("--sizes", default=None, help="image sides, comma-separated; the first is the baseline "
                   "(default 256,1024 for the test-bed, 512,2048 for sd15)")
    p.add_argument("--draws", type=int, default=16, help="fixed draws per image (default 16)")
    p.add_argument("--view", default="auto", choices=("auto", "full", "tiled"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "advdm-bench"),
                   help="where the random SD1.5 weights are written once")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    sizes = [int(s) for s in (args.sizes or ("512,2048" if args.model == "sd15" else "256,1024")).split(",")]
    rows = []
    for size in sizes:
        spec = dict(model=args.model, size=size, draws=args.draws, view=args.view, device=args.device,
                    threads=args.threads, cache=args.cache)
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
        line = next((l for l in reversed(proc.stdout.splitlines()) if l.startswith("{")), None)
        if line is None:
            print(f"{size} px: failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}", file=sys.stderr)
            return 1
        rows.append(json.loads(line))
        print(json.dumps(rows[-1]), file=sys.stderr)
    first = rows[0]
    gib = 1024 ** 3
    print(f"measure, model {args.model}, view {args.view}, {args.draws} draws, device {args.device}")
    print("| image | scored | wall time (s) | CPU time (s) | x first | of which image figures (s) | the rest (s) "
          "| x first | peak above model (GiB) | x first | peak total (GiB) | x first |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        above, above0 = r["peak_bytes"] - r["base_bytes"], first["peak_bytes"] - first["base_bytes"]
        rest, rest0 = (x["cpu_seconds"] - x["figures_cpu_seconds"] for x in (r, first))
        print(f"| {r['size']} px | {r['scored']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
              f"x{r['cpu_seconds'] / first['cpu_seconds']:.2f} | {r['figures_cpu_seconds']:.1f} | {rest:.1f} | "
              f"x{rest / rest0:.2f} | "
              f"{above / gib:.2f} | x{above / max(above0, 1):.2f} | {r['peak_bytes'] / gib:.2f} | "
              f"x{r['peak_bytes'] / first['peak_bytes']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
