"""bench/mimicry.py's paired table, which the done-when of issue 8 is read from: a
condition counts as farther in a seed only if, against the same seed's reference fine-tune,
its P(style) is lower *and* its feature distance higher, each by more than a tie margin."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_mimicry():
    spec = importlib.util.spec_from_file_location("mimicry", ROOT / "bench" / "mimicry.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_table_counts_a_seed_only_when_both_measures_agree():
    results = {
        "base": {"full_p": [0.0, 0.0, 0.0], "full_dist": [0.8, 0.8, 0.8]},
        "clean": {"full_p": [0.7, 0.5, 0.6], "full_dist": [0.3, 0.5, 0.4]},
        "noise": {"full_p": [0.8, 0.6, 0.6], "full_dist": [0.2, 0.4, 0.4]},
        # seed 0 farther than clean on both; seed 1 lower P but closer dist; seed 2 farther
        "advdm": {"full_p": [0.6, 0.4, 0.5], "full_dist": [0.4, 0.45, 0.5]},
        # within a hair of clean in every seed: ties, not "farther"
        "sds": {"full_p": [0.699, 0.499, 0.599], "full_dist": [0.301, 0.501, 0.401]},
    }
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")[:3]): line
            for line in load_mimicry().render_paired(results, ["full"]).splitlines()[2:]}
    assert set(rows) == {(c, "full", ref) for c in ("advdm", "sds") for ref in ("clean", "noise")} | {
        ("noise", "full", "clean")}
    assert rows[("advdm", "full", "clean")].endswith("| 2/3 seeds |")
    assert rows[("advdm", "full", "noise")].endswith("| 3/3 seeds |")
    assert rows[("noise", "full", "clean")].endswith("| 0/3 seeds |")
    assert rows[("sds", "full", "clean")].endswith("| 0/3 seeds |")
    assert "-0.100 ± 0.000" in rows[("advdm", "full", "clean")]  # P change, mean ± stdev over seeds
