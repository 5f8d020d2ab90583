"""Decode reuse: partners share the batch, each image is decoded once, and the partner statistics
over epochs are those of stratify_c (uniform within the stratum, the sample itself included)."""
import numpy as np
import pytest
import torch
from scipy import stats

from cit_fast.data.sources import records
from cit_fast.data.plans.balanced import BalancedPlan, make_balanced_plan
from cit_fast.data.pipelines.dali_pipeline import DaliPipeline
from cit_fast.data.plans.intervention import make_plan
from cit_fast.data.pipelines.contract import PipelineSpec
from cit_fast.data.sources import load_folder
from cit_fast.data.pipelines.torch_pipeline import TorchPipeline
from tests.data.test_pipeline_contract import arrays_set, write_folder

# unequal strata, odd sizes, a stratum of one and one of two
STRATA = np.repeat(np.arange(6), [5, 7, 12, 6, 1, 2])


def partner_counts(kind, strata, batch_size, world, epochs, reuse=True):
    n = len(strata)
    counts = np.zeros((n, n))
    for e in range(epochs):
        plan = (make_balanced_plan(kind, strata, 7, e, batch_size, world) if reuse
                else make_plan(kind, strata, 7, e))
        for r in range(world):
            idx = plan.shard(r, world)
            counts[idx, plan.partner[idx]] += 1
    return counts


def uniformity_pvalue(counts, groups):
    """Pooled chi-square test that each sample's partner is uniform over its group."""
    chi, dof = 0.0, 0
    for i in range(len(groups)):
        members = np.nonzero(groups == groups[i])[0]
        if len(members) < 2:
            continue
        obs = counts[i, members]
        exp = obs.sum() / len(members)
        chi += ((obs - exp) ** 2 / exp).sum()
        dof += len(members) - 1
    return stats.chi2.sf(chi, dof)


@pytest.mark.parametrize("batch_size, world", [(6, 1), (5, 1), (4, 2)])
def test_partner_uniform_within_stratum_like_stratify_c(batch_size, world):
    counts = partner_counts("stratify_c", STRATA, batch_size, world, epochs=1500)
    # partners never leave the stratum
    assert counts[~np.equal.outer(STRATA, STRATA)].sum() == 0
    assert uniformity_pvalue(counts, STRATA) > 1e-3
    # the sample itself is its partner with probability 1/n_s, as in stratify_c
    n_s = np.bincount(STRATA)[STRATA]
    self_rate = np.diag(counts) / counts.sum(1)
    big = n_s >= 5
    assert np.allclose(self_rate[big].mean(), (1 / n_s[big]).mean(), atol=0.02)
    assert (self_rate[n_s == 1] == 1).all()
    # and side by side with stratify_c itself: the same distribution (pooled homogeneity test)
    ref = partner_counts("stratify_c", STRATA, batch_size, world, epochs=1500, reuse=False)
    chi, dof = 0.0, 0
    for i in np.nonzero(n_s >= 2)[0]:
        members = np.nonzero(STRATA == STRATA[i])[0]
        c = stats.chi2_contingency(np.stack([counts[i, members], ref[i, members]]))
        chi, dof = chi + c.statistic, dof + c.dof
    assert stats.chi2.sf(chi, dof) > 1e-3
    # sanity of the test itself: it rejects a mildly skewed partner distribution of the same size
    skewed = counts.copy()
    first = np.array([np.nonzero(STRATA == a)[0][0] for a in STRATA])
    skewed[np.arange(len(STRATA)), first] += 0.3 * counts.sum(1) / np.bincount(STRATA)[STRATA]
    assert uniformity_pvalue(skewed, STRATA) < 1e-3


def test_random_plan_with_reuse_is_uniform_over_everything():
    strata = np.repeat(np.arange(3), 6)
    counts = partner_counts("random", strata, 6, 1, epochs=1500)
    assert uniformity_pvalue(counts, np.zeros(len(strata), int)) > 1e-3


@pytest.mark.parametrize("batch_size, world", [(8, 1), (7, 2), (2, 3), (32, 2)])
def test_batches_hold_their_partners(batch_size, world):
    rng = np.random.default_rng(batch_size)
    strata = rng.integers(0, 9, 301)
    plan = make_balanced_plan("stratify_c", strata, 3, 5, batch_size, world)
    assert isinstance(plan, BalancedPlan)
    assert sorted(plan.order.tolist()) == list(range(301))  # still a permutation
    shards = [plan.shard(r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) % batch_size == 0
    used = np.concatenate(shards)
    assert len(used) == len(set(used.tolist()))  # nobody twice in an epoch
    standard = (-(-301 // world)) // batch_size
    assert standard - 1 <= len(shards[0]) // batch_size <= standard  # about the usual epoch length
    for s in shards:
        for b in s.reshape(-1, batch_size):
            assert set(plan.partner[b].tolist()) <= set(b.tolist())
            assert (strata[plan.partner[b]] == strata[b]).all()
            _, per = np.unique(strata[b], return_counts=True)
            assert (per >= 2).all()  # every stratum present twice or more: a real choice of partner
    with pytest.raises(ValueError, match="world_size"):
        plan.shard(0, world + 1)


def test_plan_is_a_pure_function_of_seed_and_epoch():
    a = make_balanced_plan("stratify_c", STRATA, 1, 4, 6, 1)
    b = make_balanced_plan("stratify_c", STRATA, 1, 4, 6, 1)
    c = make_balanced_plan("stratify_c", STRATA, 1, 5, 6, 1)
    assert np.array_equal(a.order, b.order) and np.array_equal(a.partner, b.partner)
    assert not np.array_equal(a.order, c.order)


def test_unsupported_settings():
    with pytest.raises(ValueError, match="stratify_b"):
        PipelineSpec(batch_size=8, plan="stratify_b", decode_reuse=True)
    with pytest.raises(ValueError, match="batch_size >= 2"):
        PipelineSpec(batch_size=1, plan="stratify_c", decode_reuse=True)
    PipelineSpec(batch_size=8, plan="stratify_b", decode_reuse=True, train=False)  # eval: no plan to reuse
    none = make_balanced_plan("none", STRATA, 0, 0, 4, 1)
    assert np.array_equal(none.partner, np.arange(len(STRATA)))


@pytest.mark.parametrize("cls", [TorchPipeline, DaliPipeline])
def test_pipelines_decode_each_image_once(cls, tmp_path, monkeypatch):
    s = load_folder(str(write_folder(tmp_path / "d", n_per_class=(6, 6, 6), size=(20, 24))))
    calls = []
    real = records.decode_image
    monkeypatch.setattr(records, "decode_image", lambda p: calls.append(p) or real(p))
    reads = tmp_path / "reads.txt"
    if cls is DaliPipeline:  # DALI reads the encoded bytes itself, in its worker processes: count those
        import cit_fast.data.pipelines.dali_pipeline as dp

        real_read = dp._read

        def counted(path, kind):
            if kind == "image":
                with open(reads, "a") as f:  # (a file: the reads happen in forked workers)
                    f.write(f"{path}\n")
            return real_read(path, kind)

        monkeypatch.setattr(dp, "_read", counted)
    for reuse, per_batch in ((True, 6), (False, None)):
        calls.clear()
        reads.write_text("")
        p = cls(s, PipelineSpec(batch_size=6, plan="stratify_c", image_size=16, decode_reuse=reuse))
        batches = list(p)
        calls += reads.read_text().split()
        if per_batch:
            assert len(calls) == per_batch * len(batches)
        else:  # independent partners: up to two images per sample
            assert len(calls) > 6 * len(batches)


def test_torch_and_dali_honour_reuse_identically():
    s = arrays_set(40, classes=4)
    spec = PipelineSpec(batch_size=8, plan="stratify_c", crop_padding=1, decode_reuse=True, world_size=2, rank=1)
    a, b = TorchPipeline(s, spec), DaliPipeline(s, spec)
    for p in (a, b):
        p.set_epoch(3)
    for x, y in zip(a, b):
        assert torch.equal(x.index, y.index) and torch.equal(x.partner, y.partner)
        assert torch.equal(x.image, y.image)
        assert set(x.partner.tolist()) <= set(x.index.tolist())
