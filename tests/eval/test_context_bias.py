"""c's lift of b's logit (Singh et al.'s contextual bias seen through the scores): by hand, and in the
multi-label report and its table."""
import math

import numpy as np
import pytest

from cit_fast.eval.context_bias import context_lift
from cit_fast.eval.scores import multilabel_report
from cit_fast.eval.tables import format_report

# 6 images, classes (b, c, other): b with c (rows 0, 1), b alone (row 2), c alone (3, 4), neither (5)
TARGETS = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1]], np.float32)
SCORES = np.array([[3.0, 2.0, 0.0], [2.0, 1.0, 0.5], [0.5, -1.0, 0.0],
                   [1.0, 2.0, -1.0], [0.0, 1.5, 0.2], [-2.0, -1.0, 1.0]])


def test_context_lift_by_hand():
    r = context_lift(SCORES, TARGETS, [(0, 1)])
    assert r["with_b"] == pytest.approx((3.0 + 2.0) / 2 - 0.5)  # b's logit: with c 2.5, without c 0.5
    assert r["without_b"] == pytest.approx((1.0 + 0.0) / 2 - (-2.0))  # no b: with c 0.5, without -2
    p = r["pairs"][0]
    assert (p["b"], p["c"], p["n_b_with_c"], p["n_b_without_c"]) == (0, 1, 2, 1)


def test_context_lift_is_nan_where_a_cell_is_empty_and_left_out_of_the_mean():
    r = context_lift(SCORES, TARGETS, [(0, 1), (2, 0)])  # (2, 0): class 2 in rows 1 (with 0), 4 and 5
    assert r["pairs"][1]["with_b"] == pytest.approx(0.5 - (0.2 + 1.0) / 2)
    t = TARGETS.copy()
    t[2, 0] = 0  # no image holds b without c
    r = context_lift(SCORES, t, [(0, 1), (2, 0)])
    assert math.isnan(r["pairs"][0]["with_b"]) and r["with_b"] == pytest.approx(r["pairs"][1]["with_b"])
    with pytest.raises(ValueError, match="differ in shape"):
        context_lift(SCORES[:, :2], TARGETS, [(0, 1)])


def test_the_report_and_its_table_carry_the_lift():
    rep = multilabel_report(SCORES, TARGETS, ["b", "c", "o"], [(0, 1)])
    bp = rep["biased_pairs"]
    assert bp["c_lift_b"] == pytest.approx(2.0) and bp["c_lift"] == pytest.approx(2.5)
    assert bp["pairs"][0]["c_lift_b"] == pytest.approx(2.0)
    text = format_report({"test": rep})
    assert "c-lift" in text and "2.00" in text and "c-lift on images without b" in text
    assert "c_lift" not in multilabel_report(SCORES, TARGETS, ["b", "c", "o"]).get("biased_pairs", {})
