"""Multi-label diagnostics: the confounder attention lands on the right cells, and a tiny trained causal
model's report and `cit-fast explain --diagnostics` render non-trivial figures."""
import numpy as np
import pytest
import torch
from PIL import Image

from cit_fast.cli import main as cli
from cit_fast.data.synthetic.benchmark import save_arrays
from cit_fast.data.synthetic.multilabel import make_biased_multilabel
from cit_fast.eval.diagnostics import attention_figure, attention_probs, collect, embed_2d, embedding_figure
from cit_fast.models import create_model
from cit_fast.report import build_report
from cit_fast import checkpoint as ckpt
from cit_fast.config import load_config
from cit_fast.train.loop import main
from tests.helpers import image_batch


def assert_nontrivial_png(path, min_side=200, min_colors=50):
    assert path.is_file(), f"{path} missing"
    im = np.asarray(Image.open(path).convert("RGB"))
    assert min(im.shape[:2]) >= min_side, f"{path}: only {im.shape[1]}x{im.shape[0]}"
    colors = len(np.unique(im.reshape(-1, 3), axis=0))
    assert colors >= min_colors and im.std() > 10, f"{path}: {colors} colours, std {im.std():.1f}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("diag")
    sets = make_biased_multilabel(n_train=64, n_test_free=16, pair_test=4, size=32, seed=0)
    save_arrays(sets["train"], str(d / "train.npz"))
    save_arrays(sets["test"], str(d / "test.npz"))
    main(load_config(None, ["data.source=arrays", f"data.train={d / 'train.npz'}", f"data.test={d / 'test.npz'}",
                            "model.name=causal_resnet8", "model.embed_dim=16", "model.num_heads=2",
                            "model.num_confounders=5", "model.confounder_tokens=4", "model.dropout=0",
                            "optim.lr=0.02", "optim.epochs=1", "optim.milestones=[1]", "progress=false",
                            "threads=1", "data.batch_size=16", f"out_dir={d / 'run'}"]))
    return d / "run"


@pytest.mark.slow
def test_report_renders_multilabel_figures(run):
    page = build_report(run).read_text()
    out = run / "report"
    assert_nontrivial_png(out / "run_embedding.png")
    assert_nontrivial_png(out / "run_confounder_attention.png")
    assert "Confounder attention of each label" in page and "Label features and confounders" in page
    assert "Grad-CAM" in page  # on the trunk's last map, through decoder and intervention
    assert_nontrivial_png(out / "gradcam_run.png", min_side=150)
    assert (out / "curves.png").is_file()


@pytest.mark.slow
def test_explain_diagnostics_tsne(run, tmp_path, capsys):
    ck = str(ckpt.find_latest(run / "checkpoints"))
    assert cli(["explain", "--checkpoint", ck, "--diagnostics", "--embedding", "tsne", "--max-images", "20",
                "--out", str(tmp_path)]) == 0
    assert "confounder_attention.png" in capsys.readouterr().out
    assert_nontrivial_png(tmp_path / "embedding.png")
    assert_nontrivial_png(tmp_path / "confounder_attention.png")


def test_explain_grad_cam_for_chosen_labels_of_a_multilabel_model(run, tmp_path):
    """The multi-label paper's negative-label figure: Grad-CAM of chosen classes on chosen images."""
    ck = str(ckpt.find_latest(run / "checkpoints"))
    out = tmp_path / "cam.png"
    assert cli(["explain", "--checkpoint", ck, "--indices", "0", "1", "2", "--classes", "0", "3", "5",
                "--out", str(out)]) == 0
    assert_nontrivial_png(out, min_side=60)


def _fixed_model(c=4, k=4, d=16):
    """A causal model whose label feature of class c is e_c and whose confounder z_k is e_k (q, k = identity):
    class c must attend most to confounder c."""
    m = create_model("causal_resnet8", num_classes=c, embed_dim=d, num_heads=2, num_confounders=k, dropout=0.0)
    eye = torch.eye(d)
    with torch.no_grad():
        for lin in (m.q_proj, m.k_proj):
            lin.weight.copy_(eye * 4)
            lin.bias.zero_()
        m.confounders.set(eye[:k].clone(), torch.tensor([0.1, 0.2, 0.3, 0.4]))
    m.label_features = lambda x: eye[:c].expand(x.shape[0], c, d)  # (B, C, D)
    return m


def test_attention_of_each_label_lands_on_its_confounder(tmp_path):
    m = _fixed_model()
    batches = [image_batch(torch.zeros(3, 3, 8, 8), torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1]]))]
    attn = attention_probs(m, m.label_features(batches[0].image))
    assert attn.shape == (3, 2, 4, 4)  # (B, H, C, K)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 2, 4))
    diag = collect(m, batches)
    mean = diag["attention"].mean(0)  # (C, K)
    assert mean.argmax(1).tolist() == [0, 1, 2, 3]
    png = attention_figure(diag, ["a", "b", "c", "d"], tmp_path / "att.png", np.full(4, 0.25))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "att.png").read_bytes() == png
    assert_nontrivial_png(tmp_path / "att.png", min_side=150)


def test_decoder_baseline_embedding_and_embed_2d(tmp_path):
    m = create_model("decoder_resnet8", num_classes=3, embed_dim=16, num_heads=2, dropout=0.0)
    y = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]])
    diag = collect(m, [image_batch(torch.randn(4, 3, 16, 16), y)])
    assert diag["features"].shape == (4, 3, 16) and "attention" not in diag
    embedding_figure(diag, ["x", "y", "z"], tmp_path / "e.png", method="pca")
    assert_nontrivial_png(tmp_path / "e.png", min_side=150, min_colors=20)
    with pytest.raises(ValueError, match="not among the model's classes"):
        embedding_figure(diag, ["x", "y", "z"], tmp_path / "e.png", show=["w"])
    pts = np.random.default_rng(0).normal(size=(12, 5))
    assert embed_2d(pts, "tsne").shape == (12, 2)
    with pytest.raises(ValueError, match="embedding must be one of pca, tsne"):
        embed_2d(pts, "umap")
