"""L_inf projected gradient ascent on the pixels (Madry et al.), as AdvDM uses it.

    x' <- clip_[0,1]( Pi_eps( x' + alpha * sign(grad L(x')) ) )

The budget is enforced again after rounding to the output's bit depth, so the file that
is saved holds it exactly.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ..models.draws import Draws
from ..models.frozen import input_grad_only, recomputed
from ..models.interface import DiffusionModel
from .objectives import METHODS, SURROGATE_METHODS, objective_of
from ..settings import PRESETS, default
from .surrogate import phases, surrogate
from ..mimic.views import MODES, Views
from .eot import EOT
from .budget import BUDGETS, pixel_bound

Progress = Callable[[int, int, Tensor], None]

# Per-method defaults where the method's authors differ from AdvDM.
METHOD_DEFAULTS = {
    "advdm": {},
    "ace": {},
    "mist": {},
    "sds": {"random_start": False},  # Diff-Protect starts from the clean image
    "photoguard": {"step_decay": True},  # step decays linearly to 1/100 of its start
}

FLOW_TIMESTEPS = ("uniform", "logit-normal")
SURROGATE_FIELDS = ("surrogate", "surrogate_every", "surrogate_steps", "surrogate_rank", "surrogate_lr")



@dataclass
class ProtectConfig:
    # Defaults from advdm.settings (the default preset), shared by every entry point.
    method: str = default("method")
    epsilon: float = default("epsilon")  # L_inf budget, in 1/255 units
    # "uniform": epsilon everywhere; "perceptual": what the eye misses there, capped by epsilon
    budget: str = default("budget")
    step_size: float = default("step_size")  # PGD step, in 1/255 units
    steps: int = default("steps")
    samples: int = default("samples")  # Monte-Carlo (t, noise) samples per step, batched in one forward
    t_min: float = default("t_min")  # timestep range, as fractions of the training schedule
    t_max: float = default("t_max")
    seed: int = default("seed")
    random_start: Optional[bool] = None  # None: the method's default
    step_decay: Optional[bool] = None
    sds_ascend: bool = False  # SDS(+) instead of SDS(-)
    # What the model sees each step (advdm.mimic.views): "auto" | "full" | "train" | "tiled".
    view: str = default("view")
    resolution: Optional[int] = None  # side of the training views / tiles; None: the model's
    views_per_step: int = 1  # "train" views per step (their gradients are summed)
    crop_min: float = 0.5  # smallest random crop side, as a fraction of the shorter side
    flip: bool = False  # random horizontal flips of the training views
    # Expectation over transformations on every view (advdm.attack.eot); off by default.
    eot_jpeg: Optional[int] = None  # lowest JPEG quality drawn (up to 95)
    eot_blur: float = 0.0  # largest Gaussian blur sigma, in pixels of the view
    eot_noise: float = 0.0  # largest Gaussian noise std, in 1/255 units
    eot_prob: float = 0.5  # probability each switched-on transform is applied to a view
    # Rectified-flow models: the training timestep distribution; None keeps the model's.
    flow_timesteps: Optional[str] = None  # "uniform" | "logit-normal"
    flow_shift: Optional[float] = None
    # Recompute the encoder in backward instead of keeping its activations through the
    # denoiser's pass: peak memory of the larger of the two alone, one encoder forward more.
    low_memory: bool = False
    # Fine-tune-aware (advdm.attack.surrogate): every surrogate_every PGD steps, surrogate_steps LoRA
    # steps on the current protected image, and the attack goes through that LoRA.
    # None: on for the methods built on it (anti-dreambooth, mist-v2), off otherwise.
    surrogate: Optional[bool] = None
    surrogate_every: int = default("surrogate_every")
    surrogate_steps: int = default("surrogate_steps")
    surrogate_rank: int = default("surrogate_rank")
    surrogate_lr: float = default("surrogate_lr")

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not 0 < self.epsilon <= 255:
            raise ValueError(f"epsilon is in 1/255 units and must be in (0, 255], got {self.epsilon}")
        if self.budget not in BUDGETS:
            raise ValueError(f"unknown budget {self.budget!r}; choose one of {', '.join(BUDGETS)}")
        if self.step_size <= 0:
            raise ValueError(f"step size must be positive, got {self.step_size}")
        if self.steps < 0 or self.samples < 1:
            raise ValueError("steps must be >= 0 and samples >= 1")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"t_min and t_max must satisfy 0 <= t_min < t_max <= 1, got {self.t_min} and {self.t_max}")
        if self.view not in MODES:
            raise ValueError(f"unknown view {self.view!r}; choose one of {', '.join(MODES)}")
        if self.resolution is not None and self.resolution < 8:
            raise ValueError(f"view resolution must be at least 8 pixels, got {self.resolution}")
        if self.views_per_step < 1:
            raise ValueError(f"views per step must be >= 1, got {self.views_per_step}")
        if not 0 < self.crop_min <= 1:
            raise ValueError(f"crop_min is a fraction of the shorter side in (0, 1], got {self.crop_min}")
        EOT.from_config(self)  # validates the EOT switches
        if self.flow_timesteps not in (None, *FLOW_TIMESTEPS):
            raise ValueError(f"flow timesteps must be one of {', '.join(FLOW_TIMESTEPS)}, got {self.flow_timesteps!r}")
        if self.flow_shift is not None and self.flow_shift <= 0:
            raise ValueError(f"flow shift must be positive, got {self.flow_shift}")
        if self.surrogate is None:
            self.surrogate = self.method in SURROGATE_METHODS
        if self.surrogate:
            if self.method == "photoguard":
                raise ValueError("photoguard attacks the VAE encoder only; a denoiser surrogate does not change it")
            if self.surrogate_every < 1 or self.surrogate_steps < 1 or self.surrogate_rank < 1:
                raise ValueError("surrogate_every, surrogate_steps and surrogate_rank must be >= 1, got "
                                 f"{self.surrogate_every}, {self.surrogate_steps} and {self.surrogate_rank}")
            if not self.surrogate_lr > 0:
                raise ValueError(f"surrogate_lr must be positive, got {self.surrogate_lr}")
        defaults = METHOD_DEFAULTS.get(self.method, {})
        if self.random_start is None:
            self.random_start = defaults.get("random_start", True)
        if self.step_decay is None:
            self.step_decay = defaults.get("step_decay", False)

    @classmethod
    def preset(cls, name: str, **overrides) -> "ProtectConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def as_dict(self) -> dict:
        """The settings, as saved with every image and hashed to resume batches; without the
        surrogate's when it is off and the budget when uniform (they change nothing then, and
        hashes stay as they were)."""
        d = asdict(self)
        if self.budget == "uniform":
            del d["budget"]
        if not self.surrogate:
            for name in SURROGATE_FIELDS:
                del d[name]
        return d

    @property
    def progress_steps(self) -> int:
        """What protect() counts its progress in: PGD steps plus surrogate fine-tuning steps."""
        if not self.surrogate:
            return self.steps
        return self.steps + phases(self.steps, self.surrogate_every) * self.surrogate_steps


def quantize(x: Tensor, original: Tensor, epsilon: Union[float, Tensor], levels: int = 255,
             mask: Optional[Tensor] = None) -> Tensor:
    """Round to the output's grid (k / levels) and project onto the budget *there*:
    every stored value is within floor(epsilon * levels / 255) steps of the original's
    (epsilon: a number, or a per-pixel bound in 1/255 that broadcasts to x)."""
    orig_k = (original * levels).round()
    if torch.is_tensor(epsilon):  # float32: an integer it misses by float error comes out one step lower
        budget = torch.floor(epsilon.to(x) * levels / 255 + 1e-6)
    else:
        budget = float(int(epsilon * levels / 255 + 1e-6))
    k = (x * levels).round()
    k = torch.minimum(torch.maximum(k, orig_k - budget), orig_k + budget).clamp(0, levels)
    if mask is not None:
        k = torch.where(mask > 0, k, orig_k)
    return k / levels


def protect(
    model: DiffusionModel,
    image: Tensor,
    config: ProtectConfig,
    *,
    mask: Optional[Tensor] = None,
    progress: Optional[Progress] = None,
    levels: int = 255,
) -> Tensor:
    """Protect one image (1, 3, H, W) in [0, 1]; returns it on the k/levels grid, same size.

    mask (1, 1, H, W) in [0, 1] limits where (and how strongly) pixels may change.
    progress(done, total, current) is called after every PGD step and every surrogate
    fine-tuning step (total is config.progress_steps); raise from it to cancel.
    """
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f"expected an image of shape (1, 3, H, W), got {tuple(image.shape)}")
    with torch.inference_mode(False), torch.enable_grad():
        original = (image.detach().float().cpu().clone() * levels).round().clamp(0, levels) / levels
        original = original.to(model.device)
        if mask is not None:
            mask = mask.detach().float().clone().to(model.device).clamp(0, 1)
        bound = pixel_bound(original, config.epsilon, config.budget)  # 1/255: a number, or per pixel
        limit = bound / 255 * mask if mask is not None else bound / 255  # a scalar unless masked or perceptual
        model = _for_attack(model, config)
        draws = Draws(model, config.seed, config.t_min, config.t_max)
        objective = objective_of(config.method)(model, **_objective_kwargs(config))
        views = Views(model, config, original.shape[-2:], EOT.from_config(config))

        delta = torch.zeros_like(original)
        if config.random_start:
            delta = draws.uniform(original.shape, -1, 1).mul_(limit)
        delta.add_(original).clamp_(0, 1).sub_(original)
        done = 0

        def tick(*_):
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, config.progress_steps, original + delta)

        with _surrogate_for(model, config) as learner:
            for step in range(config.steps):
                if learner is not None and learner.due(step):
                    learner.learn(original + delta, tick)
                alpha = config.step_size / 255
                if config.step_decay:
                    alpha *= 1 - 0.99 * step / max(config.steps - 1, 1)
                x = (original + delta).requires_grad_(True)
                grad = None
                for view in views.sample(draws):
                    with input_grad_only():  # frozen convolutions keep no inputs for backward
                        (g,) = torch.autograd.grad(objective(view(x), draws), x)
                    grad = g if grad is None else grad.add_(g)
                del x
                # in place: at 2048 px every full-size temporary costs 50 MB
                delta.add_(grad.sign_(), alpha=alpha)
                delta = torch.clamp(delta, -limit, limit) if torch.is_tensor(limit) else delta.clamp_(-limit, limit)
                delta.add_(original).clamp_(0, 1).sub_(original)
                del grad
                tick()
        return quantize(original + delta, original, bound, levels, mask).cpu()


def _surrogate_for(model: DiffusionModel, config: ProtectConfig):
    if not config.surrogate or not config.steps:
        return contextlib.nullcontext()
    return surrogate(model, config.surrogate_every, config.surrogate_steps, config.surrogate_rank,
                     config.surrogate_lr, config.seed)


def _for_attack(model: DiffusionModel, config: ProtectConfig) -> DiffusionModel:
    """The model with the config's flow schedule and, for low memory, a recomputed encoder."""
    changes = {}
    if config.flow_timesteps is not None:
        changes["flow_logit_normal"] = config.flow_timesteps == "logit-normal"
    if config.flow_shift is not None:
        changes["flow_shift"] = float(config.flow_shift)
    if config.low_memory:
        changes["encode"] = recomputed(model.encode)
    return dataclasses.replace(model, **changes) if changes else model


def _objective_kwargs(config: ProtectConfig) -> dict:
    kwargs = {"samples": config.samples}
    if config.method == "sds":
        kwargs["ascend"] = config.sds_ascend
    return kwargs
