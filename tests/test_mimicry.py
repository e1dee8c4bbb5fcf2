"""bench/mimicry.py's tables: the paired table, which the done-when of issue 8 is read from
(a condition counts as farther in a seed only if, against the same seed's reference
fine-tune, its P(style) is lower *and* its feature distance higher, each by more than a tie
margin); the latent oracle's pairing with same-size latent noise; runs joined by --render.
The oracle's attack itself is tested on the test-bed model in test_testbed.py."""
import json


def test_paired_table_counts_a_seed_only_when_both_measures_agree(mimicry):
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
            for line in mimicry.render_paired(results, ["full"]).splitlines()[2:]}
    assert set(rows) == {(c, "full", ref) for c in ("advdm", "sds") for ref in ("clean", "noise")} | {
        ("noise", "full", "clean")}
    assert rows[("advdm", "full", "clean")].endswith("| 2/3 seeds |")
    assert rows[("advdm", "full", "noise")].endswith("| 3/3 seeds |")
    assert rows[("noise", "full", "clean")].endswith("| 0/3 seeds |")
    assert rows[("sds", "full", "clean")].endswith("| 0/3 seeds |")
    assert "-0.100 ± 0.000" in rows[("advdm", "full", "clean")]  # P change, mean ± stdev over seeds


def test_the_latent_oracle_is_paired_with_its_own_noise_control(mimicry):
    results = {
        "clean": {"full_p": [0.7, 0.5], "full_dist": [0.3, 0.5]},
        "noise": {"full_p": [0.7, 0.5], "full_dist": [0.3, 0.5]},
        "latent noise 0.3": {"full_p": [0.9, 0.9], "full_dist": [0.1, 0.1]},
        "latent advdm 0.3": {"full_p": [0.6, 0.6], "full_dist": [0.4, 0.4]},
    }
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")[:3]): line
            for line in mimicry.render_paired(results, ["full"]).splitlines()[2:]}
    assert set(rows) == {("noise", "full", "clean"), ("latent noise 0.3", "full", "clean"),
                         ("latent advdm 0.3", "full", "clean"), ("latent advdm 0.3", "full", "latent noise 0.3")}
    assert rows[("latent advdm 0.3", "full", "latent noise 0.3")].endswith("| 2/2 seeds |")
    assert rows[("latent advdm 0.3", "full", "clean")].endswith("| 1/2 seeds |")


def test_render_joins_runs_over_different_seeds(mimicry, tmp_path, capsys):
    args = {"finetune": "full", "strengths": "0.3"}
    files = []
    for i, (p, d) in enumerate([([0.7], [0.3]), ([0.5, 0.6], [0.5, 0.4])]):
        run = {"args": args, "results": {"clean": {"full_p": p, "full_dist": d},
                                         "advdm": {"full_p": [x - 0.1 for x in p], "full_dist": [x + 0.1 for x in d]}}}
        files.append(tmp_path / f"run{i}.json")
        files[-1].write_text(json.dumps(run))
    results = mimicry.main(["--render", *map(str, files)])
    assert results["clean"]["full_p"] == [0.7, 0.5, 0.6]
    assert "| advdm | full | clean | -0.100 ± 0.000 | +0.100 ± 0.000 | 3/3 seeds |" in capsys.readouterr().out


def test_the_fraction_judge_table_reads_the_learned_fraction_across_seeds(mimicry):
    def seed(shift):  # per-draw held-out / in-sample losses of one seed's fine-tunes
        losses = {"base": 1.0, "clean": 0.5, "advdm 8": 0.75 + shift, "noise 8": 0.5 + shift / 2}
        return {c: {"held_out": [v, v + 0.1], "in_sample": [v, v]} for c, v in losses.items()}

    run = {"losses": {"0": seed(0.0), "1": seed(0.05), "2": seed(-0.05)}}
    rows = {line.split("|")[1].strip(): line for line in mimicry.render_fractions([run]).splitlines()[2:4]}
    # (1 - 0.75) / (1 - 0.5) = 0.5 on average; the per-seed ones are 0.5, 0.4, 0.6 (stdev 0.1)
    assert "| 0.500 (" in rows["advdm 8"] and "0.500 ± 0.100 (3 seeds)" in rows["advdm 8"]
    assert "| 1.000 (" in rows["noise 8"]
    assert "3 seeds; held-out loss base" in mimicry.render_fractions([run])


def test_the_fraction_table_pairs_each_method_with_advdm_by_seed_and_gives_its_loss_gain(mimicry):
    def seed(shift, lag):  # the method lets the mimic learn `lag` (of base - clean) more than AdvDM
        losses = {"base": 1.0, "clean": 0.5, "advdm 16": 0.75 + shift, "anti-dreambooth 16": 0.75 + shift - lag / 2,
                  "noise 16": 0.5}
        return {c: {"held_out": [v, v + 0.1], "in_sample": [v, v]} for c, v in losses.items()}

    gains = {"0": {"clean": [1.0, 2.0], "anti-dreambooth 16": [1.2, 2.4]}}
    run = {"losses": {"0": seed(0.0, 0.10), "1": seed(0.05, 0.12), "2": seed(-0.05, 0.08)}, "gains": gains}
    rows = {line.split("|")[1].strip(): line.split("|") for line in mimicry.render_fractions([run]).splitlines()[2:]
            if line.startswith("|")}
    # per seed the method's fraction is AdvDM's + lag: the paired difference is +0.100, and its
    # interval is narrow because the seeds' own spread (shift) cancels in the pairing
    assert rows["anti-dreambooth 16"][-2].strip().startswith("+0.100 (+0.0")
    assert rows["advdm 16"][-2].strip() == "-"
    assert rows["anti-dreambooth 16"][-3].strip().startswith("1.200 (")  # (1.2 + 2.4) / (1 + 2)
    assert rows["advdm 16"][-3].strip() == "n/a"  # no gain figures for it in this run
