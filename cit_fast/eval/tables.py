"""Reports as aligned text tables (the JSON keeps everything): ``cit-fast eval`` and ``cross-eval``."""
from __future__ import annotations

import math
from typing import Any, Dict

def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.2f}"
    return str(v)


def format_report(report: Dict[str, Any]) -> str:
    """The report as aligned text tables (the JSON keeps everything)."""
    lines = [f"checkpoint: {report.get('checkpoint', '-')}  model: {report.get('model', '-')}  "
             f"task: {report.get('task', '-')}"]
    test = report.get("test", {})
    scalars = [(k, v) for k, v in test.items() if isinstance(v, (int, float))]
    if scalars:
        lines.append("\ntest set")
        lines += [f"  {k:<22s} {_fmt(v):>8s}" for k, v in scalars]
    pairs = test.get("biased_pairs")
    if pairs:
        lines.append("\nbiased pairs (AP %, b's AP on the subset; c-lift: b's mean logit with c minus without c, "
                     "on the images with b)")
        lines.append(f"  {'b':<14s} {'c':<14s} {'Exclusive':>10s} {'Co-occur':>10s} {'All':>8s} {'c-lift':>8s} "
                     f"{'n_ex':>6s} {'n_co':>6s}")
        for r in pairs["pairs"]:
            lines.append(f"  {str(r['b']):<14s} {str(r['c']):<14s} {_fmt(r['exclusive']):>10s} "
                         f"{_fmt(r['cooccur']):>10s} {_fmt(r['all']):>8s} {_fmt(r.get('c_lift_b', '-')):>8s} "
                         f"{r['n_exclusive']:>6d} {r['n_cooccur']:>6d}")
        lines.append(f"  {'mean':<29s} {_fmt(pairs['exclusive']):>10s} {_fmt(pairs['cooccur']):>10s} "
                     f"{_fmt(pairs['all']):>8s} {_fmt(pairs.get('c_lift_b', '-')):>8s}")
        if "c_lift" in pairs:
            lines.append(f"  {'c-lift on images without b':<29s} {_fmt(pairs['c_lift']):>10s}")
        for k, v in pairs.items():
            if k.endswith("recall"):
                lines.append(f"  {k:<29s} {_fmt(v):>10s}")
    for key, title in (("per_class_ap", "per-class AP (%)"), ("per_class_top1", "per-class top-1 (%)")):
        if test.get(key):
            lines.append(f"\n{title}")
            lines += [f"  {c:<22s} {_fmt(a) if a is not None else 'n/a':>8s}" for c, a in test[key].items()]
    for key, title in (("table2", "CIT Table II (top-1 %)"), ("bg_challenge", "Background Challenge (top-1 %)")):
        if key in report:
            lines.append(f"\n{title}")
            lines += [f"  {k:<22s} {_fmt(v):>8s}" for k, v in report[key].items()]
    return "\n".join(lines)
