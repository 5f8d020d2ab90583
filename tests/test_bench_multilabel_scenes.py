"""bench/multilabel_scenes.py's statistics: paired 95% intervals and the criteria for the paper's claim."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from multilabel_scenes import criteria, paired_ci, scene_scores  # noqa: E402


def test_paired_ci_is_the_t_interval_of_the_differences():
    d = [1.0, 2.0, 3.0, 4.0, 5.0]
    m, lo, hi = paired_ci(d)
    half = 2.776 * np.std(d, ddof=1) / np.sqrt(5)  # t_{0.975, 4}
    assert m == 3.0 and lo == pytest.approx(3 - half) and hi == pytest.approx(3 + half)
    assert paired_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    m, lo, hi = paired_ci([0.5])
    assert m == 0.5 and np.isnan(lo) and np.isnan(hi)


def _v(ex, co, al):
    return {"exclusive": ex, "cooccur": co, "mAP": al}


def test_criteria_need_every_condition():
    good = _v((2.0, 0.5, 3.5), (0.2, -0.5, 0.9), (0.1, -0.2, 0.4))
    none = _v((0.1, -1.0, 1.2), (0.0, -0.3, 0.3), (0.0, -0.1, 0.1))
    beats = {"exclusive": (1.0, 0.2, 1.8), "cooccur": (0, 0, 0), "mAP": (0, 0, 0)}
    verdict = {arm: {"raising-baseline": good, "raising-random": beats} for arm in ("3", "15")}
    verdict.update({arm: {"raising-baseline": none} for arm in ("control", "placebo")})
    (line,) = criteria(verdict, ["baseline", "raising"])
    assert "REPRODUCED" in line and "10 of 10" in line
    verdict["15"]["raising-baseline"] = _v((2.0, 0.5, 3.5), (1.5, 1.0, 2.0), (0.1, -0.2, 0.4))  # Co-occur moved
    assert "not reproduced" in criteria(verdict, ["raising"])[0]
    verdict["15"]["raising-baseline"] = good
    verdict["control"]["raising-baseline"] = good  # a gain where none can be: not reproduced
    assert "not reproduced" in criteria(verdict, ["raising"])[0]


def test_scene_scores_exclusive_cooccur_and_c_lift():
    rng = np.random.default_rng(0)
    t = np.zeros((400, 3), np.float32)
    t[:, 0] = rng.random(400) < 0.3  # b
    t[:, 1] = rng.random(400) < 0.5  # c
    t[:, 2] = rng.random(400) < 0.2
    s = rng.normal(size=(400, 3))
    s[:, 0] += 3 * t[:, 0] + 1.0 * t[:, 1]  # a model that reads b partly off c
    r = scene_scores(s, t, [(0, 1)])
    assert r["cooccur"] > r["exclusive"]
    nob = t[:, 0] == 0
    lift = s[nob & (t[:, 1] > 0), 0].mean() - s[nob & (t[:, 1] == 0), 0].mean()
    assert r["c_lift"] == pytest.approx(lift) and 0.6 < r["c_lift"] < 1.4


def _fake(ex, co, b1_ex=None, probes=None):
    r = {"exclusive": ex, "cooccur": co, "mAP": 60.0, "pairs_all": 70.0, "c_lift": 0.1, "c_lift_b": 0.2,
         "seconds": 1.0, "b1": {"exclusive": ex if b1_ex is None else b1_ex, "cooccur": co, "mAP": 59.0}}
    if probes:
        r["probes"] = probes
    return r


def test_summary_rows_branch_one_probes_and_the_default_rule():
    from multilabel_scenes import default_rule, summarise

    seeds = [0, 1, 2]
    probes = {"norm_ratio": 0.5, "spread_ratio": 0.2, "entropy": 0.6, "branch2_share": 0.1}
    results = {}
    for s in seeds:
        results[f"15/baseline_s{s}"] = _fake(50.0 + s, 60.0 + s)
        results[f"15/rebuilt_s{s}"] = _fake(49.5 + s, 58.0 + s, b1_ex=50.0 + s, probes=probes)  # ties: -0.5, gap -1.5
        results[f"15/residual_s{s}"] = _fake(45.0 + 2 * s, 62.0 + s, probes=probes)  # loses: -5 + s
    stats = {"train": [{"exclusive": 0.15, "n_exclusive": 10}], "test": [{"n_exclusive": 5, "n_cooccur": 5}]}
    table, verdict = summarise(["15"], ["baseline", "residual", "rebuilt"], seeds, results,
                               {"15": {"stats": stats, "target": 0.15}}, {})
    ex, lo, hi = verdict["15"]["rebuilt-baseline"]["exclusive"]
    assert ex == pytest.approx(-0.5) and lo == hi == pytest.approx(-0.5)
    assert verdict["15"]["rebuilt-baseline"]["gap"][0] == pytest.approx(-1.5)
    assert verdict["15"]["rebuilt-baseline"]["b1_exclusive"][0] == pytest.approx(0.0)
    assert "51.00 / 59.00 / 59.00" in table  # the rebuilt model's branch 1 alone, seed-mean
    assert "0.500 (0.500-0.500)" in table and "|logits2| / |logits1|" in table
    assert "51.00 +- 2.48" in table  # the baseline's Exclusive mean +- t_{0.975,2} sd / sqrt(3)
    rule = "\n".join(default_rule(verdict, ["baseline", "residual", "rebuilt"]))
    assert "rebuilt" in rule and "arm 15: ties" in rule
    assert "arm 15: LOSES" in [line for line in rule.splitlines() if "residual" in line][0]


def test_a_finished_run_is_reused_when_only_a_new_key_at_its_default_differs():
    from multilabel_scenes import _same_config

    from cit_fast.config import load_config, to_dict

    cfg = load_config(None, ["model.name=decoder_resnet8", "seed=3"])
    saved = to_dict(cfg)
    assert _same_config(saved, cfg)
    del saved["model"]["feature_split_norm"]  # a key added after the run was saved, at its default
    assert _same_config(saved, cfg)
    assert not _same_config(saved, load_config(None, ["model.name=decoder_resnet8", "seed=4"]))
    assert not _same_config({**saved, "model": {**saved["model"], "no_such_key": 1}}, cfg)
    assert not _same_config(None, cfg)
