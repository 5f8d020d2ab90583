import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cit_fast.models import create_model
from cit_fast.models.confounders import fit_confounders, hash_ids, kmeans, kmeans_pp, select_tokens
from tests.helpers import image_batch

TRUE_CENTERS = torch.tensor([[4.0, 0.0, 0.0], [-4.0, 1.0, 0.0], [0.0, -4.0, 3.0], [0.0, 4.0, -3.0]])
SIZES = (300, 200, 151, 97)  # uneven clusters, 748 points


def blobs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([c + 0.3 * torch.randn(n, 3, generator=g) for c, n in zip(TRUE_CENTERS, SIZES)])
    y = torch.cat([torch.full((n,), i) for i, n in enumerate(SIZES)])
    perm = torch.randperm(len(x), generator=g)
    return x[perm], y[perm]


def match(centers):
    """Index of the nearest true center of each found center."""
    return torch.cdist(centers, TRUE_CENTERS).argmin(1)


def test_recovers_known_clusters():
    x, y = blobs()
    centers, counts, inertia = kmeans(x, torch.arange(len(x)), k=4, iters=30, seed=3)
    m = match(centers)
    assert sorted(m.tolist()) == [0, 1, 2, 3]  # one center per true cluster
    torch.testing.assert_close(centers, TRUE_CENTERS[m], atol=0.08, rtol=0)
    assert counts.tolist() == [float(SIZES[i]) for i in m.tolist()]
    assert inertia == pytest.approx(0.09 * 3 * len(x), rel=0.15)  # 0.3^2 per dim


def test_deterministic_given_seed_and_independent_of_row_order():
    x, _ = blobs()
    ids = torch.arange(len(x))
    a = kmeans(x, ids, 6, iters=10, seed=5)
    b = kmeans(x, ids, 6, iters=10, seed=5)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(9))
    c = kmeans(x[perm], ids[perm], 6, iters=10, seed=5)  # rows in another order, same ids
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(a[0], c[0], atol=1e-6, rtol=0)
    assert torch.equal(a[1], c[1])
    d = kmeans(x, ids, 6, iters=10, seed=6)
    assert not torch.allclose(a[0], d[0])


def test_kmeans_pp_spreads_and_errors():
    x, _ = blobs()
    c = kmeans_pp(x, 4, seed=0)
    assert sorted(match(c.float()).tolist()) == [0, 1, 2, 3]  # D^2 seeding hits every blob here
    with pytest.raises(ValueError, match="5 clusters asked for but only 4 points"):
        kmeans(torch.randn(4, 2), torch.arange(4), 5)
    with pytest.raises(ValueError, match=r"x must be \(N, D\)"):
        kmeans(torch.randn(4, 2), torch.arange(3), 2)


def test_hash_and_token_selection_are_fixed_functions_of_ids():
    ids = torch.arange(1000)
    h = hash_ids(ids, 1)
    assert (h >= 0).all() and len(set(h.tolist())) == 1000
    assert torch.equal(hash_ids(ids[500:], 1), h[500:])
    tok = torch.randn(4, 9, 5)
    sel, gid = select_tokens(tok, torch.tensor([7, 2, 11, 3]), 4, seed=0)
    assert sel.shape == (16, 5) and gid.shape == (16,)
    sel2, gid2 = select_tokens(tok[[1, 0]], torch.tensor([2, 7]), 4, seed=0)  # same images, other batch
    by_id = {int(g): s for g, s in zip(gid, sel)}
    for g, s in zip(gid2, sel2):
        assert torch.equal(by_id[int(g)], s)


# -- 1 vs 2 processes ------------------------------------------------------------------------------

def _worker(rank, world, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        x, _ = blobs()
        ids = torch.arange(len(x))
        shard = ids[rank::world]  # as the evaluation pipelines shard: order[rank::world]
        centers, counts, inertia = kmeans(x[shard], shard, 5, iters=15, seed=11, init_pool=256)
        if rank == 0:
            torch.save({"centers": centers, "counts": counts, "inertia": inertia}, out_path)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_identical_across_one_and_two_processes(tmp_path):
    x, _ = blobs()
    one = kmeans(x, torch.arange(len(x)), 5, iters=15, seed=11, init_pool=256)
    out = tmp_path / "two.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    two = torch.load(out)
    torch.testing.assert_close(two["centers"], one[0], atol=1e-6, rtol=0)
    assert torch.equal(two["counts"], one[1])
    assert two["inertia"] == pytest.approx(one[2], rel=1e-9)


# -- over a model ------------------------------------------------------------------------------------

def _batches(n=12, bs=5, num_classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    y = (torch.rand(n, num_classes, generator=g) > 0.5).float()
    y[torch.arange(n), torch.arange(n) % num_classes] = 1
    return [image_batch(x[s:s + bs], y[s:s + bs], torch.arange(s, min(s + bs, n)))
            for s in range(0, n, bs)], x, y


@pytest.mark.parametrize("source", ["kmeans", "early", "label", "random"])
def test_fit_confounders_over_batches(source):
    torch.manual_seed(0)
    m = create_model("causal_resnet8", num_classes=4, embed_dim=16, num_heads=2, num_confounders=6,
                     confounder_source=source).train()
    batches, x, y = _batches()
    stats = fit_confounders(m, batches, seed=1, iters=5, tokens_per_image=8, init_pool=64)
    assert m.training  # mode restored
    bank = m.confounders
    assert bool(bank.fitted) and torch.isfinite(bank.z).all()
    assert bank.prior.sum().item() == pytest.approx(1.0) and (bank.prior > 0).all()
    if source == "label":
        with torch.no_grad():
            m.eval()
            f = m.label_features(x)
        expect = (y.T @ f.reshape(len(x), -1)).reshape(4, 4, 16) / y.sum(0)[:, None, None]
        torch.testing.assert_close(bank.z, torch.stack([expect[c, c] for c in range(4)]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bank.prior, y.sum(0) / y.sum())
    if source in ("kmeans", "early"):
        assert stats["tokens"] == 12 * 8
    # refitting with the same seed gives the same dictionary
    z = bank.z.clone()
    fit_confounders(m, batches, seed=1, iters=5, tokens_per_image=8, init_pool=64)
    assert torch.equal(bank.z, z)
    assert np.isfinite(m(x[:2]).detach().numpy()).all()
