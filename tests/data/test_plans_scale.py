"""Plans that scale (issue 13): the vectorised samplers give the first implementation's plans bit
for bit, their grouping helpers equal numpy's, decode-reuse batches keep their guarantees on many
strata and odd sizes, and pipelines build the next epoch's plan in the background."""
import numpy as np
import pytest

from cit_fast.data.plans import intervention
from cit_fast.data.plans.balanced import make_balanced_plan
from cit_fast.data.plans.intervention import dense_groups, make_plan, stable_order
from cit_fast.data.pipelines.contract import PipelineSpec
from cit_fast.data.pipelines.torch_pipeline import TorchPipeline
from tests.data import legacy_plans
from tests.data.test_pipeline_contract import arrays_set


def _datasets(count, seed=0):
    """Small random datasets: uneven strata (a few singletons), sparse or huge stratum ids,
    bias values with gaps; some strata with one bias value, some pools of one sample."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(1, 300))
        strata = rng.integers(0, int(rng.integers(1, 25)), n) * int(rng.choice([1, 7, 10**9]))
        bias = rng.integers(0, int(rng.integers(1, 6)), n) * int(rng.choice([1, 3]))
        yield strata, bias


@pytest.mark.parametrize("kind", ["none", "random", "stratify_c", "stratify_b"])
def test_plans_bit_identical_to_the_first_implementation(kind):
    for strata, bias in _datasets(120, seed=len(kind)):
        for seed, epoch in ((0, 0), (5, 3), (11, 41)):
            order, partner = legacy_plans.make_plan(kind, strata, seed, epoch, bias)
            plan = make_plan(kind, strata, seed, epoch, bias=bias)
            assert np.array_equal(plan.order, order) and np.array_equal(plan.partner, partner), \
                (kind, len(strata), seed, epoch)


def test_stratify_b_replays_numpy_after_a_rejected_draw(monkeypatch):
    """Lemire rejections are rare (p < 2**-22); force one per stratum: the exact replay path."""
    real = intervention._bounded
    monkeypatch.setattr(intervention, "_bounded", lambda raw, bound: (real(raw, bound)[0], False))
    for strata, bias in _datasets(40, seed=9):
        order, partner = legacy_plans.make_plan("stratify_b", strata, 2, 7, bias)
        assert np.array_equal(make_plan("stratify_b", strata, 2, 7, bias=bias).partner, partner)


def test_bounded_rejects_where_numpy_redraws():
    bound = np.uint64(3)
    threshold = (2**32 - 3) % 3  # 1: the 32-bit draw 0 gives leftover 0 < 1
    assert threshold == 1
    _, ok = intervention._bounded(np.array([0], np.uint64), np.array([bound]))
    assert not ok
    vals, ok = intervention._bounded(np.array([2**31, 2**32 - 1], np.uint64), np.array([bound, bound]))
    assert ok and vals.tolist() == [1, 2]


@pytest.mark.parametrize("keys", [np.array([5, 3, 5, 0, 3, 3]), np.array([-2, 7, -2, 10**12]),
                                  np.random.default_rng(0).integers(0, 70000, 5000), np.zeros(1, np.int64)])
def test_grouping_helpers_equal_numpy(keys):
    ids, counts, values = dense_groups(keys)
    u, inv, cnt = np.unique(keys, return_inverse=True, return_counts=True)
    assert np.array_equal(values, u) and np.array_equal(ids, inv.reshape(-1)) and np.array_equal(counts, cnt)
    assert np.array_equal(stable_order(ids, len(counts)), np.argsort(keys, kind="stable"))


@pytest.mark.parametrize("batch_size, world", [(9, 1), (6, 3), (5, 2), (4, 1), (64, 4), (3, 1)])
def test_balanced_batches_on_many_small_strata(batch_size, world):
    """Hundreds of strata of sizes 1..9 (many singletons, many odd): still whole batches holding
    their partners, nobody twice, every stratum of a batch present twice (or a singleton)."""
    rng = np.random.default_rng(batch_size * 10 + world)
    sizes = rng.integers(1, 10, 400)
    strata = rng.permutation(np.repeat(np.arange(400) * 3, sizes))  # sparse ids, shuffled
    n = len(strata)
    plan = make_balanced_plan("stratify_c", strata, 1, 2, batch_size, world)
    assert sorted(plan.order.tolist()) == list(range(n))
    shards = [plan.shard(r, world) for r in range(world)]
    used = np.concatenate(shards)
    assert len(used) == len(set(used.tolist()))
    if batch_size > 3:  # (a batch of 3 is a triple, or a pair beside a singleton: pairs wait)
        assert len(shards[0]) // batch_size >= 0.9 * (n // world // batch_size)  # little left out
    count = dict(zip(*np.unique(strata, return_counts=True)))
    for s in shards:
        for b in s.reshape(-1, batch_size):
            assert set(plan.partner[b].tolist()) <= set(b.tolist())
            assert (strata[plan.partner[b]] == strata[b]).all()
            vals, per = np.unique(strata[b], return_counts=True)
            assert all(p >= 2 or count[v] == 1 for v, p in zip(vals, per))


def test_pipeline_builds_the_next_epochs_plan_in_the_background():
    s = arrays_set(60, classes=4)
    spec = PipelineSpec(batch_size=6, plan="stratify_c", decode_reuse=True)
    p = TorchPipeline(s, spec)
    p.set_epoch(3)
    first = p.plan
    ep, fut = p._next_plan
    assert ep == 4
    upcoming = fut.result(timeout=60)
    p.set_epoch(4)
    assert p.plan is upcoming  # no rebuild: the step did not wait on a plan
    want = make_balanced_plan("stratify_c", s.strata, 0, 4, 6, 1)
    assert np.array_equal(upcoming.order, want.order) and np.array_equal(upcoming.partner, want.partner)
    p.set_epoch(4)
    assert p.plan is upcoming  # the same epoch keeps its plan
    p.load_state_dict({"epoch": 9, "start_batch": 1})  # a jump: built afresh, the stale one dropped
    assert p.plan.epoch == 9 and np.array_equal(p.plan.order, make_balanced_plan("stratify_c", s.strata, 0, 9, 6, 1).order)
    assert first.epoch == 3
    evaluation = TorchPipeline(s, PipelineSpec(batch_size=6, train=False))
    evaluation.plan
    assert evaluation._next_plan is None  # evaluation has one fixed plan


def test_plans_benchmark_smoke(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "plans.py"
    spec = importlib.util.spec_from_file_location("bench_plans", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    md = tmp_path / "r.md"
    assert mod.main(["--sizes", "10k", "--results-md", str(md)]) == 0
    text = md.read_text()
    for kind in mod.KINDS:
        assert f"| {kind} |" in text
    assert "within the 6 s goal" in capsys.readouterr().out
