import numpy as np
import pytest
from scipy import stats

from cit_fast.data.plans.intervention import make_plan
from cit_fast.data.sources.records import DataError

STRATA = np.repeat(np.arange(5), [3, 7, 10, 1, 19])  # uneven strata, one singleton


@pytest.mark.parametrize("kind", ["none", "stratify_c", "random"])
def test_plan_is_deterministic_and_changes_with_epoch(kind):
    a = make_plan(kind, STRATA, seed=3, epoch=2)
    b = make_plan(kind, STRATA, seed=3, epoch=2)
    assert (a.order == b.order).all() and (a.partner == b.partner).all()
    c = make_plan(kind, STRATA, seed=3, epoch=3)
    assert not (a.order == c.order).all()
    assert sorted(a.order) == list(range(len(STRATA)))


def test_none_is_identity():
    assert (make_plan("none", STRATA, 0, 0).partner == np.arange(len(STRATA))).all()


def test_stratify_c_partner_in_same_stratum():
    for epoch in range(5):
        p = make_plan("stratify_c", STRATA, seed=0, epoch=epoch)
        assert (STRATA[p.partner] == STRATA).all()


def test_stratify_c_uniform_within_stratum():
    """Chi-square: over many epochs, the partners of one sample cover its stratum uniformly."""
    strata = np.repeat(np.arange(3), [8, 12, 5])
    counts = np.zeros((len(strata), len(strata)))
    for epoch in range(800):
        p = make_plan("stratify_c", strata, seed=11, epoch=epoch)
        counts[np.arange(len(strata)), p.partner] += 1
    for i in (0, 10, 22):
        members = np.nonzero(strata == strata[i])[0]
        observed = counts[i, members]
        assert counts[i].sum() == observed.sum()  # never outside the stratum
        assert stats.chisquare(observed).pvalue > 1e-3


def test_random_draws_from_all_strata():
    hits = set()
    for epoch in range(20):
        p = make_plan("random", STRATA, 0, epoch)
        hits |= set(STRATA[p.partner[STRATA == 1]].tolist())
    assert hits == set(range(5))


@pytest.mark.parametrize("n, world", [(40, 2), (40, 4), (41, 2), (7, 3)])
def test_shards_disjoint_cover_equal_size(n, world):
    p = make_plan("stratify_c", np.arange(n) % 4, seed=1, epoch=0)
    shards = [p.shard(r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    allidx = np.concatenate(shards)
    assert set(allidx.tolist()) == set(range(n))  # cover
    assert len(allidx) - len(set(allidx.tolist())) == (-n) % world  # only the wrap-around padding repeats
    if n % world == 0:
        assert len(allidx) == n  # disjoint


def test_stratify_b_keeps_stratum_and_draws_b_from_prior():
    rng = np.random.default_rng(0)
    strata = np.repeat([0, 1], 300)
    bias = np.where(rng.random(600) < 0.25, 1, 0)  # P(b=1) = 0.25 overall
    b_new = []
    for epoch in range(30):
        p = make_plan("stratify_b", strata, 0, epoch, bias=bias)
        assert (strata[p.partner] == strata).all()
        b_new.append(bias[p.partner])
    b_new = np.concatenate(b_new)
    prior = bias.mean()
    assert abs(b_new.mean() - prior) < 0.02
    # independent of the sample's own b: the intervention cuts B -> X
    own = np.tile(bias, 30)
    assert abs(b_new[own == 1].mean() - b_new[own == 0].mean()) < 0.04


def test_stratify_b_needs_visible_bias():
    with pytest.raises(DataError, match="sample 0 has none"):
        make_plan("stratify_b", STRATA, 0, 0, bias=np.full(len(STRATA), -1))
    with pytest.raises(DataError, match="no 'bias' column"):
        make_plan("stratify_b", STRATA, 0, 0)


def test_unknown_plan():
    with pytest.raises(ValueError, match="must be one of none, stratify_c, stratify_b, random"):
        make_plan("bogus", STRATA, 0, 0)
