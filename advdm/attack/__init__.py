"""The protection: L_inf PGD on the pixels (pgd) against an objective (objectives, loss), with
the attack's expectation over transformations (eot) and the fine-tune-aware LoRA surrogate
(surrogate)."""
from .objectives import METHODS
from .pgd import PRESETS, SURROGATE_FIELDS, ProtectConfig, protect, quantize

__all__ = ["METHODS", "PRESETS", "SURROGATE_FIELDS", "ProtectConfig", "protect", "quantize"]
