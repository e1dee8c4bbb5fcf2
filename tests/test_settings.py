"""One set of defaults (advdm.settings) for every entry point that runs without a host."""
import pytest

from advdm import ProtectConfig
from advdm.cli import build_parser
from advdm.settings import DEFAULT_PRESET, MEASURE, PRESETS, PROTECT


def test_protect_config_defaults_are_the_default_preset():
    c = ProtectConfig()
    for k, v in PRESETS[DEFAULT_PRESET].items():
        assert getattr(c, k) == v, k
    for k in ("method", "t_min", "t_max", "seed", "view"):
        assert getattr(c, k) == PROTECT[k].default, k


def test_cli_defaults_are_the_cores():
    parser = build_parser()
    p = parser.parse_args(["protect", "x.png", "-o", "out", "--checkpoint", "builtin:tiny"])
    assert (p.preset, p.method, p.seed, p.view, p.prompt) == tuple(
        PROTECT[k].default for k in ("preset", "method", "seed", "view", "prompt"))
    m = parser.parse_args(["measure", "a.png", "b.png", "--checkpoint", "builtin:tiny"])
    assert (m.samples, m.seed) == (MEASURE["samples"].default, MEASURE["seed"].default)


def test_every_default_lies_within_its_bounds_and_choices():
    for knobs in (PROTECT, MEASURE):
        for name, k in knobs.items():
            if k.choices:
                assert k.default in k.choices, name
            if k.low is not None:
                assert k.low <= k.default <= k.high, name


def test_timestep_range_is_checked_when_the_config_is_made():
    with pytest.raises(ValueError, match="t_min"):
        ProtectConfig(t_min=0.6, t_max=0.4)
