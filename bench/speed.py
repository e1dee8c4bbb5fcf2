"""Speed and memory of one protection step on a random-weight SD1.5-shaped model.

    /work/venv/bin/python bench/speed.py                 # default: 256 and 512, all methods, fp32 + bf16
    python bench/speed.py --res 512 --methods advdm,sds --precision fp32 --steps 3
    python bench/speed.py --large                        # adds 1024 and 2048 (advdm + floor only)
    python bench/speed.py --methods advdm,anti-dreambooth,mist-v2,ace --precision fp32 --cycles 1 --no-floor
    python bench/speed.py --res 256 --methods advdm --finetune-step --precision fp32 --no-floor

The model is built from the real SD1.5 component configs shipped in advdm/models/configs/sd1
(UNet2DConditionModel + AutoencoderKL, ~940M parameters) with seeded random weights and a
random (1, 77, 768) text context; nothing is downloaded. Each configuration (method x
resolution x precision, and the floor) runs in a fresh subprocess so peak memory does not
mix. Methods are timed through the real advdm.protect() path with a progress callback;
the floor is one plain VAE-encoder forward+backward w.r.t. its input plus one UNet
forward+backward w.r.t. its input, all parameters frozen. See bench/README.md.

The fine-tune-aware methods (anti-dreambooth, mist-v2) interleave surrogate_steps LoRA
fine-tuning steps before every surrogate_every-th PGD step, the first phase before PGD step
0. A warm-up step followed by two timed ones would time PGD steps only, so with --cycles N
every method runs N x surrogate_every PGD steps, none of them untimed, and s/step is the
whole run's wall time over its PGD steps: for these methods the fine-tuning steps are
inside it, and so is their memory in the peak. The notes split it into the mean PGD step
and the mean fine-tuning step (first of each kind, which carries one-off costs, left out)
and give r, one fine-tuning step over one AdvDM step of the same run, which predicts the
cost 1 + (surrogate_steps / surrogate_every) r. --finetune-step times the surrogate's
fine-tuning step alone (advdm.mimic.finetune.train on a LoRA, as advdm.attack.surrogate runs it).
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "advdm" / "models" / "configs" / "sd1"  # the single-file loader's own configs
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
METHODS = ("advdm", "sds", "mist", "photoguard", "ace", "anti-dreambooth", "mist-v2")
SURROGATE = ("anti-dreambooth", "mist-v2")  # LoRA surrogate fine-tuned during the attack
GRAD_METHODS_USING_UNET = ("advdm", "sds", "mist", "ace", "anti-dreambooth", "mist-v2")

# Reduced precisions. "bf16": UNet weights in bfloat16 (what the command line's
# --dtype bfloat16 gives; the VAE stays float32). "bf16-autocast": float32 weights, the
# UNet run under torch.autocast(bfloat16). "fp16": UNet weights in float16 (CUDA only).
PRECISIONS = ("fp32", "bf16", "bf16-autocast", "fp16")


# ----------------------------------------------------------------------------- child side


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _release_and_reset_peak(device) -> int:
    """Free what can be freed and restart the peak counter; returns the baseline (bytes)."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:  # Linux >= 4.0: "5" resets VmHWM (peak RSS) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _rss_kib("VmRSS") * 1024


def _peak(device) -> int:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    hwm = _rss_kib("VmHWM")
    if hwm:
        return hwm * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _weights_file(cache: str, seed: int) -> Path:
    return Path(cache) / f"sd1-random-seed{seed}.pt"


def make_weights(cache: str, seed: int = 0) -> Path:
    """Random SD1.5-shaped UNet + VAE weights (diffusers' own init, seeded), written once
    so every subprocess maps the same file instead of re-initialising 940M parameters."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    path = _weights_file(cache, seed)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(_config("unet"))
    vae = AutoencoderKL.from_config(_config("vae"))
    tmp = path.with_suffix(".tmp")
    torch.save({"unet": unet.state_dict(), "vae": vae.state_dict()}, tmp)
    tmp.replace(path)
    return path


def _config(sub: str) -> dict:
    name = "scheduler_config.json" if sub == "scheduler" else "config.json"
    return json.loads((CONFIGS / sub / name).read_text())


def build(device, precision: str, cache: str, seed: int = 0):
    """(DiffusionModel, parts) of the SD1.5 architecture with random weights."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from advdm.models.diffusers_model import Conditioning, unet_model

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_config("unet"))
        vae = AutoencoderKL.from_config(_config("vae"))
    state = torch.load(str(_weights_file(cache, seed)), map_location="cpu", mmap=True, weights_only=True)
    unet.load_state_dict(state["unet"], assign=True)
    vae.load_state_dict(state["vae"], assign=True)
    scheduler = DDPMScheduler.from_config(_config("scheduler"))
    context = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(seed + 1))
    weights = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    unet.to(device, weights).eval().requires_grad_(False)
    vae.to(device, torch.float32).eval().requires_grad_(False)
    # Own, resident copies (as a normally loaded model has), then drop the file mapping.
    with torch.no_grad():
        for module in (unet, vae):
            for t in list(module.parameters()) + list(module.buffers()):
                t.data = t.data.clone()
    del state
    gc.collect()
    parts = dict(unet=unet, vae=vae, context=context, cond=Conditioning(context=context),
                 alphas=scheduler.alphas_cumprod)
    model = unet_model(unet, vae, parts["cond"], scheduler.alphas_cumprod, "eps",
                       vae.config.scaling_factor, name="sd1-random")
    parts["plain_denoise"] = model.denoise
    if precision == "bf16-autocast":
        model = dataclasses.replace(model, denoise=_autocast(model.denoise, device))
    return model, parts


def _autocast(denoise, device):
    import torch

    def wrapped(x, sigma):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return denoise(x, sigma)

    return wrapped


def _image(res: int, device, seed: int = 0):
    """A smooth random 'painting' (low-frequency colour field plus fine texture)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=g)
    img = F.interpolate(coarse, size=(res, res), mode="bicubic", align_corners=False)
    img = img + 0.05 * torch.rand(1, 3, res, res, generator=g)
    return ((img.clamp(0, 1) * 255).round() / 255).to(device)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_floor(spec, parts, device):
    """One plain VAE-encoder fwd+bwd w.r.t. its input + one UNet fwd+bwd w.r.t. its input."""
    import torch

    unet, vae, context = parts["unet"], parts["vae"], parts["context"].to(device)
    res = spec["res"]
    autocast = spec["precision"] == "bf16-autocast"
    x = _image(res, device)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, 4, res // 8, res // 8, generator=g).to(device, unet.dtype)
    t = torch.tensor([500], device=device)
    vae_times, unet_times, cpu_times = [], [], []
    for _ in range(spec["warmup"] + spec["steps"]):
        _sync(device)
        c0 = time.process_time()
        t0 = time.perf_counter()
        xi = x.clone().requires_grad_(True)
        moments = vae.encode(xi * 2 - 1).latent_dist
        torch.autograd.grad(moments.mean.sum() + moments.std.sum(), xi)
        del moments
        _sync(device)
        t1 = time.perf_counter()
        zi = z.clone().requires_grad_(True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = unet(zi, t, encoder_hidden_states=context.to(unet.dtype)).sample
        torch.autograd.grad(out.float().sum(), zi)
        del out
        _sync(device)
        t2 = time.perf_counter()
        vae_times.append(t1 - t0)
        unet_times.append(t2 - t1)
        cpu_times.append(time.process_time() - c0)
    # SDS's own floor: the same VAE pass plus a UNet forward without autograd
    fwd_times = []
    for _ in range(max(1, spec["steps"])):
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            unet(z, t, encoder_hidden_states=context.to(unet.dtype))
        _sync(device)
        fwd_times.append(time.perf_counter() - t0)
    w = spec["warmup"]
    total = [a + b for a, b in zip(vae_times, unet_times)]
    best = min(range(w, len(total)), key=total.__getitem__)
    return {"step_s": total[best], "mean_s": sum(total[w:]) / spec["steps"], "vae_s": vae_times[best],
            "unet_s": unet_times[best], "unet_fwd_s": min(fwd_times), "all_s": total,
            "cpu_s": min(cpu_times[w:])}


def tick_kinds(config) -> list:
    """What each progress tick of protect(config) is: "ft" (a surrogate fine-tuning step)
    or "pgd", in order (advdm.attack: a phase of fine-tuning before every surrogate_every-th step)."""
    kinds = []
    for step in range(config.steps):
        if config.surrogate and step % config.surrogate_every == 0:
            kinds += ["ft"] * config.surrogate_steps
        kinds.append("pgd")
    return kinds


def run_method(spec, model, device):
    """Timed steps through advdm.protect(), timed with its progress callback: a warm-up
    and timed steps, or (spec["cycles"]) whole surrogate cycles with every tick timed."""
    from advdm import ProtectConfig, protect

    x = _image(spec["res"], device)
    stamps, cpu = [], []

    def progress(step, total, current):
        _sync(device)
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())

    extra = {"view": spec["view"]} if spec.get("view") else {}
    if spec.get("low_memory"):
        extra["low_memory"] = True
    for name in ("surrogate_every", "surrogate_steps"):  # --surrogate-every / --surrogate-steps
        if spec.get(name):
            extra[name] = spec[name]
    cycles = spec.get("cycles") or 0
    if cycles:
        probe = ProtectConfig(method=spec["method"], **extra)
        steps, w = cycles * probe.surrogate_every, 0
    else:
        steps, w = spec["warmup"] + spec["steps"], spec["warmup"]
    config = ProtectConfig(method=spec["method"], steps=steps, samples=spec["samples"], seed=0, **extra)
    _sync(device)
    start, cpu0 = time.perf_counter(), time.process_time()
    out = protect(model, x.cpu(), config, progress=progress)
    times = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    cpu_times = [b - a for a, b in zip([cpu0] + cpu[:-1], cpu)]
    kinds = tick_kinds(config)
    assert len(kinds) == len(times), (len(kinds), len(times))
    pgd = [t for t, k in zip(times, kinds) if k == "pgd"]
    ft = [t for t, k in zip(times, kinds) if k == "ft"]
    result = {"linf": float((out - x.cpu()).abs().max() * 255), "all_s": times, "kinds": kinds,
              "surrogate_every": config.surrogate_every, "surrogate_steps": config.surrogate_steps,
              "surrogate": bool(config.surrogate)}
    if cycles:  # whole cycles: all wall time over the PGD steps, fine-tuning included
        result.update(step_s=sum(times) / len(pgd), mean_s=sum(times) / len(pgd), cpu_s=sum(cpu_times) / len(pgd),
                      cycles=cycles)
    else:
        result.update(step_s=min(pgd[w:]), mean_s=sum(pgd[w:]) / spec["steps"], cpu_s=min(cpu_times[w:]))
    result["pgd_s"] = _steady(pgd)
    result["pgd_cpu_s"] = _steady([t for t, k in zip(cpu_times, kinds) if k == "pgd"])
    if ft:
        result["ft_s"] = _steady(ft)
        result["ft_cpu_s"] = _steady([t for t, k in zip(cpu_times, kinds) if k == "ft"])
    return result


def _steady(times):
    """Mean of a kind of step, its first (one-off costs: allocation, first phase's setup) left out."""
    rest = times[1:] or times
    return sum(rest) / len(rest)


def run_finetune_step(spec, model, device):
    """The surrogate's fine-tuning step alone: advdm.mimic.finetune.train on the LoRA surrogate
    (advdm.attack.surrogate), one phase of warm-up + steps, each step timed by train's progress."""
    from advdm import ProtectConfig
    from advdm.attack.surrogate import surrogate

    c = ProtectConfig(method="anti-dreambooth")
    x = _image(spec["res"], device)
    stamps, cpu = [], []

    def progress(*_):
        _sync(device)
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())

    n = spec["warmup"] + spec["steps"]
    with surrogate(model, every=c.surrogate_every, steps=n, rank=c.surrogate_rank, lr=c.surrogate_lr, seed=0) as s:
        _sync(device)
        start, cpu0 = time.perf_counter(), time.process_time()
        s.learn(x, progress)  # as protect() calls it (train runs its backward inside input_grad_only)
    times = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    cpu_times = [b - a for a, b in zip([cpu0] + cpu[:-1], cpu)]
    w = spec["warmup"]
    return {"step_s": min(times[w:]), "mean_s": sum(times[w:]) / spec["steps"], "all_s": times,
            "cpu_s": min(cpu_times[w:]), "cpu_mean_s": sum(cpu_times[w:]) / spec["steps"]}


def strength_check(spec, model, parts, device):
    """Does the reduced precision change the attack? At the same pixels and the same
    (t, noise) draws, the fraction of pixels whose gradient sign (the PGD update) matches
    float32's, next to the agreement between two float32 gradients with different draws
    (the Monte-Carlo noise every step has anyway). Also the objective's relative error."""
    import torch
    from advdm.models.diffusers_model import unet_model
    from advdm.models.draws import Draws
    from advdm.attack.objectives import OBJECTIVES
    from advdm.mimic.views import pad_to_multiple

    x0 = _image(spec["res"], device)

    def grad(m, seed):
        draws = Draws(m, seed)
        objective = OBJECTIVES[spec["method"]](m, samples=spec["samples"])
        x = x0.clone().requires_grad_(True)
        value = objective(pad_to_multiple(x, m.pixel_multiple), draws)
        return torch.autograd.grad(value, x)[0], float(value)

    g_low, v_low = grad(model, 0)
    if spec["precision"] == "bf16-autocast":
        model32 = dataclasses.replace(model, denoise=parts["plain_denoise"])
    else:
        unet = parts["unet"].to(torch.float32)
        model32 = unet_model(unet, parts["vae"], parts["cond"], parts["alphas"], "eps",
                             parts["vae"].config.scaling_factor, name="sd1-random")
    g32, v32 = grad(model32, 0)
    g32b, _ = grad(model32, 1)
    agree = float((g_low.sign() == g32.sign()).float().mean())
    agree_noise = float((g32b.sign() == g32.sign()).float().mean())
    return {"sign_agree": agree, "sign_agree_noise": agree_noise, "obj_rel_err": abs(v_low - v32) / max(abs(v32), 1e-12)}


def child(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"]) if spec.get("threads") else None
    device = torch.device(spec["device"])
    t0 = time.perf_counter()
    model, parts = build(device, spec["precision"], spec["cache"])
    build_s = time.perf_counter() - t0
    base = _release_and_reset_peak(device)
    result = {"build_s": build_s, "base_bytes": base}
    try:
        if spec["method"] == "floor":
            result.update(run_floor(spec, parts, device))
        elif spec["method"] == "finetune-step":
            result.update(run_finetune_step(spec, model, device))
        else:
            result.update(run_method(spec, model, device))
        result["peak_bytes"] = _peak(device)
    except (RuntimeError, MemoryError) as exc:  # out of memory under the limit
        result["peak_bytes"] = _peak(device)
        result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        return result
    if spec.get("strength") and spec["precision"] != "fp32" and spec["method"] in GRAD_METHODS_USING_UNET:
        result.update(strength_check(spec, model, parts, device))
    return result


# ---------------------------------------------------------------------------- parent side


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _limit_memory(limit_bytes: int):
    def preexec():
        if limit_bytes > 0:  # address-space cap: an over-large run fails with an error, not the OOM killer
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return preexec


def run_child(spec: dict, limit_bytes: int, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    env = dict(os.environ, PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=_limit_memory(limit_bytes) if spec["device"] == "cpu" else None, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:160]}"}


def _gb(b):
    return f"{b / 2**30:.2f}"


def _fmt_row(cols, widths):
    return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cols, widths)))


HEADER = ("method", "res", "precision", "s/step", "x floor t", "cpu s/step", "x floor cpu", "peak GB", "x floor mem",
          "vs fp32 t", "x advdm t", "x advdm cpu", "x advdm mem", "notes")


def render(rows) -> str:
    table = [HEADER] + rows
    widths = [max(len(str(r[i])) for r in table) for i in range(len(HEADER))]
    lines = [_fmt_row(HEADER, widths), _fmt_row(["-" * w for w in widths], widths)]
    lines += [_fmt_row(r, widths) for r in rows]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--res", default="256,512", help="comma-separated square resolutions (default 256,512)")
    p.add_argument("--large", action="store_true", help="also 1024 and 2048 (advdm and the floor only)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--precision", default="auto",
                   help="comma-separated subset of fp32,bf16,bf16-autocast,fp16; auto: fp32,bf16 on CPU, fp32,fp16 on CUDA")
    p.add_argument("--steps", type=int, default=2, help="timed steps per configuration, after --warmup (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps (default 1)")
    p.add_argument("--cycles", type=int, default=0,
                   help="instead of --warmup/--steps: N x surrogate_every PGD steps per method, all timed, "
                        "s/step = wall time (fine-tuning included) over PGD steps; for the fine-tune-aware methods")
    p.add_argument("--surrogate-every", type=int, default=0, help="ProtectConfig.surrogate_every (0: the default)")
    p.add_argument("--surrogate-steps", type=int, default=0, help="ProtectConfig.surrogate_steps (0: the default)")
    p.add_argument("--no-floor", action="store_true", help="skip the floor rows (and the x floor columns)")
    p.add_argument("--finetune-step", action="store_true",
                   help="also time one surrogate fine-tuning step alone (row finetune-step; x advdm t is r)")
    p.add_argument("--samples", type=int, default=1, help="Monte-Carlo samples per step (ProtectConfig.samples)")
    p.add_argument("--view", default="", help="ProtectConfig.view (auto, full, train, tiled); default: the core's default")
    p.add_argument("--low-memory", action="store_true", help="ProtectConfig.low_memory (encoder recomputed in backward)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads in each child (0: torch's default)")
    p.add_argument("--strength", default="first", choices=["first", "all", "none"],
                   help="reduced-precision gradient-sign check (3 extra fwd+bwd per row): at the first resolution "
                        "only (default), at all, or none")
    p.add_argument("--cache", default=str(ROOT / "bench" / "results"),
                   help="where the random weights are written once (3.7 GB; default bench/results, git-ignored)")
    p.add_argument("--mem-limit-gb", type=float, default=0,
                   help="CPU: address-space cap per child (default: 90%% of MemAvailable at start)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    p.add_argument("--json", help="also write every raw result to this file")
    p.add_argument("--render", metavar="JSON", help="only print the table of a --json file written earlier")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return 0

    if args.render:
        print(render(table_rows(json.loads(Path(args.render).read_text()))))
        return 0

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    precisions = args.precision
    if precisions == "auto":
        precisions = "fp32,fp16" if device == "cuda" else "fp32,bf16"
    precisions = [q.strip() for q in precisions.split(",") if q.strip()]
    for q in precisions:
        if q not in PRECISIONS:
            p.error(f"unknown precision {q!r}")
        if q == "fp16" and device == "cpu":
            p.error("fp16 is not offered on CPU (no fast fp16 kernels); use bf16 or bf16-autocast")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            p.error(f"unknown method {m!r}")
    resolutions = [int(r) for r in args.res.split(",") if r.strip()]
    plan = [(r, m) for r in resolutions for m in methods]
    if args.large:
        plan += [(r, m) for r in (1024, 2048) if r not in resolutions for m in methods if m == "advdm"]
        resolutions += [r for r in (1024, 2048) if r not in resolutions]
    limit = int(args.mem_limit_gb * 2**30) if args.mem_limit_gb else int(0.9 * _mem_available())

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), device {device}"
          + (f", {torch.cuda.get_device_name()}" if device == "cuda" else f", per-run memory cap {_gb(limit)} GB"), flush=True)
    timing = (f"{args.cycles} surrogate cycle(s) per method, all steps timed" if args.cycles else
              f"{args.warmup} warm-up + {args.steps} timed steps")
    print(f"# model: SD1.5 architecture (advdm/models/configs/sd1), random weights; {timing}, samples={args.samples}", flush=True)

    t_start = time.perf_counter()
    make_weights(args.cache)
    load0 = os.getloadavg()
    raw, rows = [], []
    for res in resolutions:
        for q in precisions:
            base = dict(res=res, precision=q, device=device, steps=args.steps, warmup=args.warmup,
                        samples=args.samples, threads=args.threads, cache=args.cache, view=args.view,
                        low_memory=args.low_memory,
                        strength=args.strength == "all" or (args.strength == "first" and res == resolutions[0]))
            base.update(cycles=args.cycles, surrogate_every=args.surrogate_every,
                        surrogate_steps=args.surrogate_steps)
            if not args.no_floor:
                floor = run_child(dict(base, method="floor"), limit, args.timeout)
                raw.append(dict(base, method="floor", **floor))
                _progress(raw[-1], t_start)
            for r, m in plan:
                if r != res:
                    continue
                result = run_child(dict(base, method=m), limit, args.timeout)
                raw.append(dict(base, method=m, **result))
                _progress(raw[-1], t_start)
                if args.json:  # after every row, so an interrupted run keeps what it measured
                    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.json).write_text(json.dumps(raw, indent=1))
            if args.finetune_step:
                result = run_child(dict(base, method="finetune-step", cycles=0), limit, args.timeout)
                raw.append(dict(base, method="finetune-step", cycles=0, **result))
                _progress(raw[-1], t_start)

    rows = table_rows(raw)
    print()
    print(render(rows))
    load1 = os.getloadavg()
    print(f"\n# total wall time {time.perf_counter() - t_start:.0f} s; load average (1 min) at start "
          f"{load0[0]:.1f}, at end {load1[0]:.1f} on {os.cpu_count()} cores")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(raw, indent=1))
    return 0


def _progress(r, t_start):
    msg = r.get("error") or f"{r['step_s']:.2f} s/step, peak {_gb(r['peak_bytes'])} GB"
    print(f"[{time.perf_counter() - t_start:6.0f} s] {r['method']:>10} {r['res']:>5} {r['precision']:>13}: {msg}",
          file=sys.stderr, flush=True)


def table_rows(raw):
    floors = {(r["res"], r["precision"]): r for r in raw if r["method"] == "floor"}
    fp32 = {(r["res"], r["method"]): r for r in raw if r["precision"] == "fp32"}
    advdm = {(r["res"], r["precision"]): r for r in raw if r["method"] == "advdm" and "step_s" in r and not r.get("error")}
    rows = []
    for r in raw:
        f = floors.get((r["res"], r["precision"]), {})
        ref = fp32.get((r["res"], r["method"]))
        notes = []
        if r.get("error"):
            notes.append(r["error"])
        if r["method"] == "floor" and "vae_s" in r:
            notes.append(f"vae {r['vae_s']:.2f} s + unet {r['unet_s']:.2f} s")
            if "unet_fwd_s" in r:  # the least an SDS step can cost, as a fraction of the floor
                notes.append(f"unet fwd {r['unet_fwd_s']:.2f} s: sds floor "
                             f"{(r['vae_s'] + r['unet_fwd_s']) / r['step_s']:.2f}x")
        if r.get("view") and r["method"] != "floor":
            notes.append(f"view {r['view']}")
        if r.get("low_memory") and r["method"] != "floor":
            notes.append("low memory")
        if "pgd_s" in r and (r.get("cycles") or "ft_s" in r):
            a = advdm.get((r["res"], r["precision"]))
            note = (f"{r['cycles']} cycle(s), " if r.get("cycles") else "") + f"{len(r['all_s'])} ticks; pgd {r['pgd_s']:.2f} s"
            if "ft_s" in r:
                note += (f" + {r['surrogate_steps']} ft of {r['ft_s']:.2f} s per {r['surrogate_every']} pgd")
                if a and "pgd_s" in a:
                    rr = r["ft_s"] / a["pgd_s"]
                    note += (f"; r = ft / advdm pgd {rr:.2f}, "
                             f"1 + {r['surrogate_steps']}/{r['surrogate_every']} r = "
                             f"{1 + r['surrogate_steps'] / r['surrogate_every'] * rr:.2f}")
                if a and "pgd_cpu_s" in a and "ft_cpu_s" in r:
                    rc = r["ft_cpu_s"] / a["pgd_cpu_s"]
                    note += (f"; cpu r {rc:.2f}, 1 + {r['surrogate_steps']}/{r['surrogate_every']} r = "
                             f"{1 + r['surrogate_steps'] / r['surrogate_every'] * rc:.2f}")
                    if (r["surrogate_steps"], r["surrogate_every"]) != (4, 10):
                        note += f" (defaults 1 + 4/10 r = {1 + 0.4 * rc:.2f})"
            notes.append(note)
        if "base_bytes" in r:
            notes.append(f"weights {_gb(r['base_bytes'])} GB")
        if "sign_agree" in r:
            notes.append(f"sign=fp32 {r['sign_agree']:.3f} (fp32 draw-to-draw {r['sign_agree_noise']:.3f}), "
                         f"loss rel.err {r['obj_rel_err']:.1e}")
        ok = "step_s" in r and not r.get("error")
        fok = "step_s" in f and not f.get("error")
        step = f"{r['step_s']:.2f}" if ok else "-"
        xt = f"{r['step_s'] / f['step_s']:.2f}" if ok and fok else "-"
        peak = _gb(r["peak_bytes"]) + (">" if r.get("error") else "") if "peak_bytes" in r else "-"
        xm = f"{r['peak_bytes'] / f['peak_bytes']:.2f}" if ok and fok else "-"
        vs = (f"{r['step_s'] / ref['step_s']:.2f}" if ok and ref is not r and ref and "step_s" in ref and not ref.get("error")
              else "-")
        cs = f"{r['cpu_s']:.2f}" if ok and "cpu_s" in r else "-"
        xc = f"{r['cpu_s'] / f['cpu_s']:.2f}" if ok and fok and "cpu_s" in r and "cpu_s" in f else "-"
        a = advdm.get((r["res"], r["precision"]))
        aok = ok and a is not None and r["method"] != "floor"
        xa = f"{r['step_s'] / a['step_s']:.2f}" if aok else "-"
        if aok and r["method"] == "finetune-step" and "pgd_s" in a:
            xa = f"{r['step_s'] / a['pgd_s']:.2f}"  # r: one fine-tuning step over one AdvDM step
        xam = f"{r['peak_bytes'] / a['peak_bytes']:.2f}" if aok and "peak_bytes" in a else "-"
        xac = f"{r['cpu_s'] / a['cpu_s']:.2f}" if aok and "cpu_s" in r and "cpu_s" in a else "-"
        if aok and r["method"] == "finetune-step" and "pgd_cpu_s" in a:
            xac = f"{r['cpu_s'] / a['pgd_cpu_s']:.2f}"
        rows.append((r["method"], r["res"], r["precision"], step, xt, cs, xc, peak, xm, vs, xa, xac, xam,
                     "; ".join(notes)))
    return rows


if __name__ == "__main__":
    sys.exit(main())
