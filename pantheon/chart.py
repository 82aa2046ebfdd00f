"""Dental chart picture (PNG) summarising a ToothAnalysis :class:`~pantheon.results.Result`.

Layout, as an OPG is viewed (patient's right on the viewer's left): upper arch 18 ... 11 | 21 ... 28
on top, lower arch 48 ... 41 | 31 ... 38 below, the midline as a vertical rule. Each tooth box is
coloured by its findings: grey = not detected (missing or below the score threshold), green =
healthy, red = caries, orange = anomaly (red with an orange border when both). Inside: the
Demirjian stage letter and its probability; outside: the FDI number and the detection score.
A demo-weights warning is printed when the result carries one. Detected primary teeth (51-85)
are listed under the chart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

from .results import Result

UPPER = [18, 17, 16, 15, 14, 13, 12, 11, 21, 22, 23, 24, 25, 26, 27, 28]
LOWER = [48, 47, 46, 45, 44, 43, 42, 41, 31, 32, 33, 34, 35, 36, 37, 38]
COLORS = {"missing": "#c8c8c8", "healthy": "#4caf50", "caries": "#e53935", "anomaly": "#fb8c00"}


def tooth_status(row: dict) -> Dict[str, bool]:
    """The pipeline's per-tooth calls (``caries`` / ``anomaly``); rows of older findings tables
    without them fall back to pixels / probability."""
    if "caries" in row and "anomaly" in row:
        return {"caries": bool(row["caries"]), "anomaly": bool(row["anomaly"])}
    caries = bool(row.get("caries_pixels", 0)) or bool(row.get("caries_area_mm2") or 0)
    anomaly = bool(row.get("anomaly_pixels", 0)) or (row.get("anomaly_probability") or 0) >= 0.5
    return {"caries": caries, "anomaly": anomaly}


def dental_chart(result: Result, path, title: str = "MATHENA dental chart") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch, Patch

    rows = {int(r["tooth"]): r for r in result.tables.get("findings", [])}
    fig, ax = plt.subplots(figsize=(12, 5.2))
    ax.set_xlim(-0.6, 16.6)
    ax.set_ylim(0.2, 5.75)
    ax.set_axis_off()
    w, h = 0.8, 1.4
    n_caries = n_anomaly = 0
    for arch, (teeth, y, num_y, score_y) in enumerate(((UPPER, 3.2, 5.05, 4.78), (LOWER, 1.0, 0.55, 0.82))):
        for k, fdi in enumerate(teeth):
            x = k + 0.1 + (0.2 if k >= 8 else 0.0) - 0.1
            row = rows.get(fdi)
            if row is None:
                face, edge, lw = COLORS["missing"], "#9e9e9e", 1.0
            else:
                st = tooth_status(row)
                n_caries += st["caries"]
                n_anomaly += st["anomaly"]
                face = COLORS["caries"] if st["caries"] else COLORS["anomaly"] if st["anomaly"] else COLORS["healthy"]
                edge, lw = (COLORS["anomaly"], 4.0) if st["caries"] and st["anomaly"] else ("#333333", 1.2)
            ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.18",
                                        facecolor=face, edgecolor=edge, linewidth=lw))
            ax.text(x + w / 2, num_y, str(fdi), ha="center", va="center", fontsize=10, fontweight="bold")
            if row is not None:
                ax.text(x + w / 2, y + h * 0.58, str(row.get("stage", "")), ha="center", va="center",
                        fontsize=15, fontweight="bold", color="white")
                sp = row.get("stage_probability")
                if sp is not None:
                    ax.text(x + w / 2, y + h * 0.22, f"{sp:.2f}", ha="center", va="center", fontsize=7,
                            color="white")
                ax.text(x + w / 2, score_y, f"{row['score']:.2f}", ha="center", va="center", fontsize=6.5,
                        color="#555555")
            else:
                ax.text(x + w / 2, y + h / 2, "–", ha="center", va="center", fontsize=14, color="#808080")
    ax.plot([8.0, 8.0], [0.9, 4.75], color="#444444", linewidth=1.2, linestyle="--")
    ax.text(-0.55, 3.9, "upper", rotation=90, va="center", fontsize=9, color="#444444")
    ax.text(-0.55, 1.7, "lower", rotation=90, va="center", fontsize=9, color="#444444")
    ax.text(0.0, 5.5, "patient's right", fontsize=8, color="#444444")
    ax.text(16.0, 5.5, "patient's left", fontsize=8, color="#444444", ha="right")
    n = len(rows)
    ax.set_title(f"{title}: {n} {'tooth' if n == 1 else 'teeth'} detected, {n_caries} with caries, "
                 f"{n_anomaly} with an anomaly\n"
                 "number = FDI tooth, small grey number = detection score, letter = Demirjian stage "
                 "(with probability)", fontsize=10)
    legend = [Patch(facecolor=COLORS["healthy"], edgecolor="#333333", label="healthy"),
              Patch(facecolor=COLORS["caries"], edgecolor="#333333", label="caries"),
              Patch(facecolor=COLORS["anomaly"], edgecolor="#333333", label="anomaly"),
              Patch(facecolor=COLORS["caries"], edgecolor=COLORS["anomaly"], linewidth=3, label="caries + anomaly"),
              Patch(facecolor=COLORS["missing"], edgecolor="#9e9e9e", label="not detected")]
    ax.legend(handles=legend, loc="lower center", ncol=5, fontsize=9, frameon=False, bbox_to_anchor=(0.5, -0.09))
    extra = []
    primary = sorted(t for t in rows if t >= 51)
    if primary:
        extra.append("primary teeth detected: " + ", ".join(map(str, primary)))
    warning = result.notes.get("warning")
    if warning:
        extra.append("WARNING: " + warning)
    if extra:
        fig.text(0.5, 0.015, "   ".join(extra), ha="center", fontsize=9,
                 color="#b71c1c" if warning else "#333333", fontweight="bold" if warning else "normal")
    fig.tight_layout(rect=(0, 0.05 if extra else 0.0, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
