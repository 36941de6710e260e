"""The report's plots, each returned as a base64 PNG so the HTML report is one self-contained file.

Figures are built with `matplotlib.figure.Figure` rather than pyplot: no global figure state and
no GUI backend; PNGs are rendered by Agg.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

from tunewright.evaluate.metrics import confusion_matrix

# Beyond this many labels a confusion matrix is unreadable: keep the most frequent, merge the rest.
CONFUSION_TOP_LABELS = 15


def _figure(width: float = 6.4, height: float = 3.6):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def to_base64_png(fig) -> str:
    """Render a figure to PNG and return it base64-encoded (for a data: URI)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def loss_curves(rows: Sequence[dict]) -> str | None:
    """Training and validation loss by optimiser step, from metrics.jsonl rows; None without losses."""
    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if not train and not val:
        return None
    from matplotlib.ticker import MaxNLocator

    fig = _figure()
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="training loss")
    if val:
        ax.plot(*zip(*val), marker="o", label="validation loss")
    ax.set_xlabel("optimiser step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return to_base64_png(fig)


def confusion_top(
    preds: Sequence[str | None],
    refs: Sequence[str],
    labels: Sequence[str],
    top: int = CONFUSION_TOP_LABELS,
) -> tuple[np.ndarray, list[str], list[str]]:
    """The confusion matrix restricted to the `top` most frequent reference labels.

    Rows are those labels, plus "other" for the rest when there are more; columns the same labels
    (and "other"), then "invalid" (an answer that named no label).
    """
    full = confusion_matrix(preds, refs, labels)
    support = full.sum(axis=1)
    keep = sorted(np.argsort(-support, kind="stable")[:top].tolist())
    rest = [i for i in range(len(labels)) if i not in keep]
    names = [labels[i] for i in keep]
    if not rest:
        return full, names, names + ["invalid"]
    cols = np.concatenate(
        [full[:, keep], full[:, rest].sum(axis=1, keepdims=True), full[:, -1:]], axis=1
    )
    rows = np.vstack([cols[keep], cols[rest].sum(axis=0, keepdims=True)])
    return rows, names + ["other"], names + ["other", "invalid"]


def confusion(
    panels: dict[str, tuple[Sequence[str | None], Sequence[str]]], labels: Sequence[str]
) -> str:
    """One confusion-matrix heatmap per model (e.g. strongest base and tuned), side by side."""
    size = min(len(labels), CONFUSION_TOP_LABELS) + 2
    fig = _figure(width=max(6.0, 0.35 * size * len(panels) + 2), height=max(4.0, 0.35 * size + 2.5))
    for k, (name, (preds, refs)) in enumerate(panels.items()):
        matrix, row_names, col_names = confusion_top(preds, refs, labels)
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.imshow(matrix, cmap="Blues")
        ax.set_title(name)
        ax.set_xticks(
            range(len(col_names)), [_short(n) for n in col_names], rotation=90, fontsize=7
        )
        ax.set_yticks(
            range(len(row_names)), [_short(n) for n in row_names] if k == 0 else [], fontsize=7
        )
        ax.set_xlabel("predicted")
        if k == 0:
            ax.set_ylabel("reference")
        if matrix.size <= 400:  # numbers stay legible only in small matrices
            for (r, c), count in np.ndenumerate(matrix):
                if count:
                    ax.text(
                        c,
                        r,
                        str(count),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if count > matrix.max() / 2 else "black",
                    )
    return to_base64_png(fig)


def length_histograms(lengths: dict[str, Sequence[int]]) -> str:
    """Distribution of answer lengths (new tokens) per model, as overlaid step histograms."""
    fig = _figure()
    ax = fig.add_subplot()
    top = max((max(v) for v in lengths.values() if len(v)), default=1)
    bins = np.arange(0, top + 2) - 0.5 if top <= 40 else 30
    for name, values in lengths.items():
        ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=name)
    ax.set_xlabel("answer length (tokens)")
    ax.set_ylabel("examples")
    ax.legend()
    return to_base64_png(fig)


def scaling_curve(scaling: dict) -> str:
    """The headline metric against the number of training examples, with 95% intervals."""
    points = sorted(scaling["points"], key=lambda p: p["examples"])
    x = [p["examples"] for p in points]
    y = np.array([p["value"] for p in points])
    err = np.array(
        [[v - p["low"] for v, p in zip(y, points)], [p["high"] - v for v, p in zip(y, points)]]
    )
    fig = _figure()
    ax = fig.add_subplot()
    ax.errorbar(x, y, yerr=np.clip(err, 0, None), marker="o", capsize=3)
    if len(x) > 1 and min(x) > 0 and max(x) / min(x) >= 10:
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(x, [f"{v:,}" for v in x])  # label the measured sizes, not powers of ten
    ax.set_xlabel("training examples")
    ax.set_ylabel(scaling["metric"])
    ax.grid(alpha=0.3)
    return to_base64_png(fig)


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"
