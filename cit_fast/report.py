"""``cit-fast report RUN_DIR``: a self-contained HTML page (and PNGs) of a run or a set of runs.

It shows the loss / accuracy curves of every run found under RUN_DIR, the CIT Table IV when the
directory holds a ``cit-fast table4`` sweep, any evaluation reports (``eval*.json``: BG-Gap,
Exclusive / Co-occur mAP, ...), and grids of objects beside the contexts the intervention plan
paired them with and the composites the model trained on (like the paper's Fig. 7), so a user sees
at a glance whether masks and pairing are sane.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .checkpoint import find_latest
from .data.build import build_datasets, build_pipeline
from .data.pipelines.contract import compose
from .errors import UsageError
from .eval.diagnostics import run_diagnostics, run_is_multilabel_transformer
from .eval.explain import explain_images, per_class_accuracy, spread_indices
from .eval.run import load_run, run_dir_config
from .models import model_task
from .table4 import ROWS, VERSIONS, format_table
from .utils import atomic_path, atomic_write_text


def find_runs(root: Path) -> List[Path]:
    """Run directories (holding results.json or a log) at root or one level below, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"report: run directory {root} not found")
    cands = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    runs = [p for p in cands if (p / "results.json").is_file() or (p / "log_rank0.jsonl").is_file()]
    if not runs:
        raise UsageError(f"report: no run under {root} (expected results.json or log_rank0.jsonl)")
    return runs


def load_history(run: Path) -> List[Dict]:
    if (run / "results.json").is_file():
        return json.loads((run / "results.json").read_text()).get("history", [])
    return [json.loads(l) for l in (run / "log_rank0.jsonl").read_text().splitlines() if l.strip()]


def _save_png(fig, path: Path) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    data = buf.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return data


def plot_curves(runs: List[Path], out: Path) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        hist = load_history(run)
        if not hist:
            continue
        ep = [h["epoch"] for h in hist]
        label = run.name
        ax_loss.plot(ep, [h["train_loss"] for h in hist], marker=".", label=label)
        evaluated = [h for h in hist if h.get("test_top1") is not None]  # eval_every may skip epochs
        ax_acc.plot([h["epoch"] for h in evaluated], [h["test_top1"] for h in evaluated], marker=".", label=label)
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    ax_acc.set(title="test top-1 (%)", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    if len(runs) <= 16:
        ax_acc.legend(fontsize=7, loc="lower right")
    data = _save_png(fig, out)
    plt.close(fig)
    return data


def composite_grid(run: Path, out: Path, n: int = 8) -> Optional[bytes]:
    """Rows: object, the context partner, the intervened composite; the object's mask outlined on the
    object and on the composite (like the paper's Fig. 7)."""
    from PIL import Image


    cfg = run_dir_config(run)
    if cfg is None:
        return None
    if cfg.intervention.plan == "none":
        cfg.intervention.plan = "stratify_c"  # show what CIT would pair, even for a baseline run
    cfg.intervention.epochwise = False  # the intervened sample only
    train_set, _ = build_datasets(cfg.data)
    pipe = build_pipeline(train_set, cfg, train=True, batch_size=n)
    pipe.set_epoch(0)
    raw = next(iter(pipe.raw_batches()))
    spec = pipe.spec
    comp = compose(raw, spec).image
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    composite = np.clip((comp.permute(0, 2, 3, 1).float().numpy() * std + mean) * 255, 0, 255).astype(np.uint8)
    flips = raw["flip"].numpy()

    def flipped(x):  # composites are flipped; show objects and contexts the same way
        return np.stack([t[:, ::-1] if f else t for t, f in zip(x, flips)])

    obj, ctx = flipped(raw["obj"].numpy()).copy(), flipped(raw["ctx"].numpy())
    edge = _mask_edge(flipped(raw["mask"].numpy()) > 127)
    obj[edge] = (255, 255, 0)  # outline the mask on the object
    composite[edge] = (255, 255, 0)  # and where it was pasted
    pad = 2
    rows = []
    for row in (obj, ctx, composite):
        tiles = [np.pad(t, ((pad, pad), (pad, pad), (0, 0)), constant_values=255) for t in row]
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    scale = max(1, 96 // raw["obj"].shape[1])
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = buf.getvalue()
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return data


def _mask_edge(m: np.ndarray) -> np.ndarray:
    """(N,H,W) bool -> pixels on the mask's boundary."""
    inner = m.copy()
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    inner[:, :, 1:] &= m[:, :, :-1]
    inner[:, :, :-1] &= m[:, :, 1:]
    return m & ~inner


def _png_bytes(arr: np.ndarray, path: Path, min_height: int = 160) -> bytes:
    from PIL import Image

    scale = max(1, -(-min_height // arr.shape[0]))
    img = Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return buf.getvalue()


def _latest_ckpt(run: Path) -> Optional[Path]:

    return find_latest(run / "checkpoints")


def gradcam_figure(run: Path, out: Path, n: int = 8) -> Optional[bytes]:
    """Grad-CAM of the run's newest checkpoint over a spread of test classes (every model family)."""

    ck = _latest_ckpt(run)
    if ck is None:
        return None
    loaded = load_run(ck)
    return _png_bytes(explain_images(loaded, spread_indices(loaded.test_set, n)), out)


def per_class_change_figure(pairs: List[tuple], out: Path) -> Optional[bytes]:
    """Bar charts of per-class test accuracy, CIT minus baseline, one panel per (name, base, cit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    deltas = []
    for name, base, cit in pairs:
        accs = []
        for run in (base, cit):
            ck = _latest_ckpt(run)
            if ck is None:
                return None
            loaded = load_run(ck)
            accs.append(per_class_accuracy(loaded.model, loaded.pipeline()))
        deltas.append((name, loaded.classes, accs[1] - accs[0]))
    fig, axes = plt.subplots(1, len(deltas), figsize=(4 * len(deltas), 3.2), squeeze=False)
    for ax, (name, classes, d) in zip(axes[0], deltas):
        ax.bar(range(len(d)), d, color=["tab:green" if v >= 0 else "tab:red" for v in d])
        ax.set_xticks(range(len(d)), classes, rotation=60, fontsize=7)
        ax.axhline(0, color="k", lw=0.5)
        ax.set(title=f"{name}: CIT - baseline", ylabel="accuracy change (points)")
    data = _save_png(fig, out)
    plt.close(fig)
    return data


def multilabel_section(run: Path, out_dir: Path) -> List[str]:
    """Causal multi-label runs: PCA of label features and confounders, confounder attention per label."""

    ck = _latest_ckpt(run)
    if ck is None:
        return []
    paths = run_diagnostics(ck, out_dir, prefix=f"{run.name}_")
    parts = [f"<h2>Label features and confounders: {html.escape(run.name)}</h2><p>PCA of the label-specific "
             "features of test images (a point per label present in the image, coloured by class) and, for a "
             "causal model, the confounder prototypes (stars, sized by P(z)), in the intervention's attention "
             "space q(X), k(Z)</p>"
             + _img_tag(paths["embedding"].read_bytes(), f"embedding {run.name}")]
    if "attention" in paths:
        parts.append(f"<h2>Confounder attention of each label: {html.escape(run.name)}</h2><p>rows: classes "
                     "&middot; columns: confounders (with P(z)); mean attention over heads and test images</p>"
                     + _img_tag(paths["attention"].read_bytes(), f"confounder attention {run.name}"))
    return parts


def _img_tag(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _table4(root: Path) -> Optional[str]:

    acc = {}
    for label, fixed, plan in ROWS:
        for v in ([fixed] if fixed else VERSIONS):
            f = root / f"{plan}-{v}" / "results.json"
            if not f.is_file():
                return None
            acc[f"{plan}-{v}"] = json.loads(f.read_text())["test_top1"]
    return format_table(acc)


def _md_table_html(md: str) -> str:
    lines = [l for l in md.splitlines() if l.startswith("|") and not set(l) <= set("|-")]
    cells = [[c.strip().replace("\\|", "|") for c in l.strip("|").split(" | ")] for l in lines]
    head, body = cells[0], cells[1:]
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
            + "</table>")


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def _kv_table(rows: Dict[str, object], head=("", "")) -> str:
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows.items())
            + "</table>")


def eval_section(report: Dict, title: str) -> str:
    """An ``cit-fast eval`` report as the researcher reads it: the test scores, CIT Table II, the
    Background Challenge, biased pairs and the per-class scores (not the config it ran with)."""
    test = report.get("test", {})
    parts = [f"<h2>Evaluation: {html.escape(title)}</h2><p>checkpoint {html.escape(str(report.get('checkpoint', '')))}"
             f" &middot; model {html.escape(str(report.get('model', '')))} &middot; epoch {report.get('epoch', '')}</p>"]
    scalars = {k: v for k, v in test.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    parts.append("<h3>Test set</h3>" + _kv_table(scalars, ("metric", "value")))
    if "table2" in report:
        names = {"obj_and_bg": "object + background", "only_obj": "only object", "only_bg": "only background"}
        parts.append("<h3>CIT Table II (top-1 %)</h3>"
                     + _kv_table({names.get(k, k): v for k, v in report["table2"].items()}, ("input", "top-1 %")))
    if "bg_challenge" in report:
        parts.append("<h3>Background Challenge (top-1 %)</h3>"
                     + _kv_table(report["bg_challenge"], ("test set", "top-1 %")))
    pairs = test.get("biased_pairs")
    if pairs:
        rows = "".join(f"<tr><td>{html.escape(str(r['b']))}</td><td>{html.escape(str(r['c']))}</td>"
                       f"<td>{_fmt(r['exclusive'])}</td><td>{_fmt(r['cooccur'])}</td><td>{_fmt(r['all'])}</td></tr>"
                       for r in pairs["pairs"])
        parts.append("<h3>Biased pairs (AP %)</h3><table><tr><th>b</th><th>c</th><th>Exclusive</th><th>Co-occur</th>"
                     f"<th>All</th></tr>{rows}</table>")
    for key, name in (("per_class_ap", "AP %"), ("per_class_top1", "top-1 %")):
        if test.get(key):
            parts.append(f"<h3>Per class ({name})</h3>" + _kv_table(test[key], ("class", name)))
    return "".join(parts)


def _is_double(run: Path) -> bool:

    cfg = run_dir_config(run)
    return cfg is not None and model_task(cfg.model.name, False, cfg.model.task) == "double"


def build_report(root: Path, out_dir: Optional[Path] = None) -> Path:
    """Write ``out_dir/index.html`` (default RUN_DIR/report) and its PNGs. Everything is made in a
    hidden staging directory and moved in at the end: a report that fails leaves nothing behind."""
    import os
    import shutil
    import tempfile

    root = Path(root)
    runs = find_runs(root)
    out_dir = Path(out_dir) if out_dir else root / "report"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _build_report(root, runs, stage, title=str(root))
        out_dir.mkdir(exist_ok=True)
        for f in stage.iterdir():
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out_dir / "index.html"


def _build_report(root: Path, runs: List[Path], out_dir: Path, title: str) -> None:
    parts = [f"<h1>cit_fast report: {html.escape(title)}</h1>"]
    summary = []
    for run in runs:
        res = json.loads((run / "results.json").read_text()) if (run / "results.json").is_file() else {}
        summary.append((run.name, res.get("model", "?"), res.get("plan", "?"), res.get("test_top1"), res.get("epochs")))
    parts.append("<h2>Runs</h2><table><tr><th>run</th><th>model</th><th>plan</th><th>test top-1 (%)</th>"
                 "<th>epochs</th></tr>" + "".join(
                     f"<tr><td>{html.escape(str(n))}</td><td>{html.escape(str(m))}</td><td>{html.escape(str(p))}</td>"
                     f"<td>{'' if a is None else f'{a:.2f}'}</td><td>{e or ''}</td></tr>" for n, m, p, a, e in summary)
                 + "</table>")
    t4 = _table4(root)
    if t4:
        parts.append("<h2>CIT Table IV (synthetic V1-V4)</h2>" + _md_table_html(t4))
    for ev in sorted(root.glob("**/eval*.json")):
        parts.append(eval_section(json.loads(ev.read_text()), str(ev.relative_to(root))))
    curves = plot_curves(runs, out_dir / "curves.png")
    parts.append("<h2>Training curves</h2>" + _img_tag(curves, "training curves"))
    shown = 0
    for run in runs[:4]:
        grid = composite_grid(run, out_dir / f"composites_{run.name}.png")
        if grid is not None:
            shown += 1
            parts.append(f"<h2>Objects and their intervened contexts: {html.escape(run.name)}</h2>"
                         "<p>rows: object (mask outlined) &middot; context partner &middot; composite</p>"
                         + _img_tag(grid, f"composite grid {run.name}"))
    # diagnostics (the paper's Grad-CAM figure; per-class accuracy change of CIT over the baseline)
    by_name = {r.name: r for r in runs}

    pairs = [(v, by_name[f"none-{v}"], by_name[f"stratify_c-{v}"]) for v in VERSIONS
             if f"none-{v}" in by_name and f"stratify_c-{v}" in by_name]

    multilabel_runs = [r for r in runs[:4] if run_is_multilabel_transformer(r)]
    cam_runs = [r for p in pairs[-1:] for r in p[1:]] if pairs else runs[:2]
    for run in cam_runs:
        fig = gradcam_figure(run, out_dir / f"gradcam_{run.name}.png")
        if fig is not None:
            rows = ("content input &middot; its Grad-CAM &middot; context input &middot; its Grad-CAM"
                    if _is_double(run) else "test images &middot; Grad-CAM")
            parts.append(f"<h2>Grad-CAM: {html.escape(run.name)}</h2><p>one test image per class, rows: {rows} "
                         "(of the predicted class; red = most important)</p>"
                         + _img_tag(fig, f"grad-cam {run.name}"))
    if pairs:
        fig = per_class_change_figure(pairs, out_dir / "per_class_change.png")
        if fig is not None:
            parts.append("<h2>Per-class accuracy change, CIT (Stratify C|A) - baseline</h2>"
                         + _img_tag(fig, "per-class accuracy change"))
    for run in multilabel_runs:  # the multi-label paper's embedding and the confounder attention of each label
        parts += multilabel_section(run, out_dir)
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px} table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right} img{max-width:100%}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>cit_fast report</title><style>{style}</style>" \
           f"</head><body>{''.join(parts)}</body></html>\n"
    atomic_write_text(out_dir / "index.html", page)
