"""One set of defaults (advdm.settings) for every entry point that runs without a host."""
import pytest

from advdm import ProtectConfig
from advdm.cli import build_parser
from advdm.settings import DEFAULT_PRESET, MEASURE, MIMICRY, PRESETS, PROTECT


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
    for knobs in (PROTECT, MEASURE, MIMICRY):
        for name, k in knobs.items():
            if k.choices:
                assert k.default in k.choices, name
            if k.low is not None and k.default is not None:
                assert k.low <= k.default <= k.high, name


def test_timestep_range_is_checked_when_the_config_is_made():
    with pytest.raises(ValueError, match="t_min"):
        ProtectConfig(t_min=0.6, t_max=0.4)


def test_mimicry_check_defaults_are_one_set_for_the_cli_and_the_config():
    from advdm.evaluation.mimicry import MimicryConfig, config_from_options

    args = build_parser().parse_args(["mimicry", "--train", "a.png", "--protected", "b.png", "--checkpoint", "builtin:tiny"])
    assert {name: getattr(args, name) for name in MIMICRY} == {name: k.default for name, k in MIMICRY.items()}
    assert config_from_options({}) == MimicryConfig()
    c = config_from_options({"steps": 5, "lr": 1e-3, "seeds": 2, "picture_size": 64})
    assert (c.finetune.steps, c.finetune.lr, c.seeds, c.picture_size) == (5, 1e-3, 2, 64)


@pytest.mark.parametrize("option,value", [("seeds", 0), ("seeds", 33), ("draws", 1), ("lr", 0.0), ("rank", 129),
                                          ("pictures", -1), ("picture_steps", 0), ("picture_size", 4),
                                          ("resolution", 5000), ("seed", -1)])
def test_mimicry_options_outside_their_bounds_are_refused_by_their_cli_name(option, value):
    from advdm.evaluation.mimicry import config_from_options

    flag = "--" + option.replace("_", "-")
    with pytest.raises(ValueError, match=f"^{flag} must be between"):
        config_from_options({option: value}, label=lambda name: "--" + name.replace("_", "-"))
