"""cit_fast.stats: the 95% Student t interval over seeds, by hand."""
import math

import pytest

from cit_fast.stats import mean_ci, paired_ci, t975


@pytest.mark.parametrize("df, t", [(1, 12.706), (2, 4.303), (4, 2.776), (22, 2.086), (30, 2.042), (31, 1.96), (500, 1.96)])
def test_t975(df, t):
    assert t975(df) == t  # 22 lies between the table's 20 and 25: the wider value of 20


def test_t975_needs_a_degree_of_freedom():
    with pytest.raises(ValueError, match="at least 1"):
        t975(0)


def test_mean_ci_by_hand():
    m, lo, hi = mean_ci([70.0, 72.0, 74.0])  # sd 2, n 3: half-width 4.303 * 2 / sqrt(3)
    assert m == 72.0 and hi - m == pytest.approx(4.303 * 2 / math.sqrt(3)) and m - lo == pytest.approx(hi - m)
    m, lo, hi = paired_ci([1.0, 2.0, 3.0, 4.0, 5.0])  # sd sqrt(2.5), n 5, df 4
    assert m == 3.0 and hi - m == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5))
    m, lo, hi = mean_ci([5.0])
    assert m == 5.0 and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])
