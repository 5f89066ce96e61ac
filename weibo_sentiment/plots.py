"""Pictures as PNG files: training curves (written into every adapter as `training.png`) and the evaluation figure
(`evaluate --plot`: confusion matrix, reliability diagram before and after calibration, accuracy vs coverage).

Figures are drawn on matplotlib's Agg canvas directly (`matplotlib.figure.Figure`): no display is needed, pyplot
is never imported and the backend a notebook has chosen stays as it is. Settings apply only while a figure is
drawn (`matplotlib.rc_context`); the one lasting change is that a CJK font found outside matplotlib's font list is
added to it (`fontManager.addfont`).

Chinese label names need a font with CJK glyphs, and matplotlib's own (DejaVu Sans) has none. `cjk_font()` looks,
in this order, at the file named by the environment variable WEIBO_SENTIMENT_FONT, the CJK families matplotlib
knows (Noto Sans CJK, Source Han Sans, WenQuanYi, PingFang, Microsoft YaHei, SimHei...), the fonts fontconfig
lists for Chinese (`fc-list :lang=zh`: fonts installed after matplotlib built its font cache), the fonts of the
`mplfonts` package when it is installed, and the usual macOS and Windows font files. Latin text stays in DejaVu
Sans; only glyphs DejaVu lacks come from the CJK font. Without one, a label whose name cannot be drawn is shown
by its id (0, 1, ...), the figure says so in a footnote, the id-to-name mapping is stored in the PNG's
`Description` text chunk and logged once, and nothing warns about missing glyphs.

Every PNG carries the text chunk `Software: weibo-sentiment`: that is how `output.check_output_file` recognises
an earlier picture of ours that may be replaced.
"""

from __future__ import annotations

import io
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .fonts import FONT_ENV, Fonts, cjk_font
from .output import SOFTWARE, atomic_open, check_output_file

logger = logging.getLogger(__name__)

RELIABILITY_BINS = 15
DPI = 100


# ---- writing ------------------------------------------------------------------------------------------------
def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig, title: str, description: str = "") -> bytes:
    metadata = {"Software": SOFTWARE, "Title": title}
    if description:
        metadata["Description"] = description  # a non-Latin-1 value goes into an iTXt chunk (UTF-8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata=metadata, pil_kwargs={"optimize": True})
    return buffer.getvalue()


def _write(path: Path, data: bytes, *, checked: bool) -> Path:
    if checked:  # a file anywhere: atomically, and only over an earlier picture of ours (or nothing)
        with atomic_open(path, "wb", encoding=None, kind="plot") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


# ---- training curves ----------------------------------------------------------------------------------------
def training_figure(log_history: Sequence[dict], path: str | Path, *, title: str = "Training",
                    checked: bool = False) -> Path:
    """Training loss per logging step and validation accuracy / macro-F1 (and loss) per epoch, from a Trainer's
    `state.log_history`, as a PNG at `path`. `checked`: refuse to replace anything but an earlier picture of ours
    and write atomically (the adapter's temporary directory needs neither)."""
    path = Path(path)
    steps = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [e for e in log_history if "eval_accuracy" in e or "eval_macro_f1" in e]
    summary = next((e for e in reversed(log_history) if "train_loss" in e), None)
    fonts = Fonts([title])
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    with matplotlib.rc_context(fonts.rc()):
        fig = _new_figure(10, 4)
        loss_ax, metric_ax = fig.subplots(1, 2)
        if steps:
            x, y = zip(*steps)
            loss_ax.plot(x, y, color="tab:blue", marker="o" if len(steps) < 30 else None, markersize=3,
                         linewidth=1.2, label="training loss")
        elif summary is not None and "step" in summary:
            loss_ax.plot([summary["step"]], [summary["train_loss"]], "o", color="tab:blue",
                         label="training loss (mean of the run)")
        eval_loss = [(e["step"], e["eval_loss"]) for e in evals if "eval_loss" in e and "step" in e]
        if eval_loss:
            x, y = zip(*eval_loss)
            loss_ax.plot(x, y, "s--", color="tab:orange", markersize=5, linewidth=1, label="validation loss")
        for e in evals:
            if "step" in e:
                loss_ax.axvline(e["step"], color="0.8", linewidth=0.8, zorder=0)
        loss_ax.set_xlabel("training step (grey lines: end of each epoch's evaluation)")
        loss_ax.set_ylabel("cross-entropy loss")
        loss_ax.set_title("Loss")
        if steps or eval_loss or summary is not None:
            loss_ax.legend(loc="upper right", fontsize="small")
        else:
            _empty(loss_ax, "no loss logged")

        for key, name, style in (("eval_accuracy", "accuracy", "o-"), ("eval_macro_f1", "macro-F1", "s-")):
            points = [(e.get("epoch", i + 1), e[key]) for i, e in enumerate(evals) if key in e]
            if points:
                x, y = zip(*points)
                metric_ax.plot(x, y, style, markersize=5, linewidth=1.4, label=f"validation {name}")
        if evals:
            best = max(evals, key=lambda e: e.get("eval_macro_f1", e.get("eval_accuracy", 0)))
            if "eval_macro_f1" in best:
                metric_ax.annotate(f"best macro-F1 {best['eval_macro_f1']:.3f}",
                                   (best.get("epoch", 1), best["eval_macro_f1"]), textcoords="offset points",
                                   xytext=(-6, 8), ha="right", fontsize="small")
            values = [e[k] for e in evals for k in ("eval_accuracy", "eval_macro_f1") if k in e]
            low = min(values)
            metric_ax.set_ylim(max(0.0, math.floor(low * 10) / 10 - 0.05), 1.0)
            metric_ax.legend(loc="lower right", fontsize="small")
            epochs = [e.get("epoch", i + 1) for i, e in enumerate(evals)]
            if len(epochs) == 1:
                metric_ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
        else:
            _empty(metric_ax, "no evaluation logged")
        metric_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        metric_ax.set_xlabel("epoch")
        metric_ax.set_ylabel("score on the validation data")
        metric_ax.set_title("Validation")
        metric_ax.grid(alpha=0.3)
        loss_ax.grid(alpha=0.3)
        fig.suptitle(title if fonts.can_draw(title) else "Training")
        data = _png(fig, "training curves")
    return _write(path, data, checked=checked)


def training_extras(log_history: Sequence[dict]) -> Callable[[Path], None]:
    """For `save_adapter(extras=...)`: writes `training.png` into the adapter directory; a failure is logged as a
    warning and never costs the trained adapter."""

    def extras(folder: Path) -> None:
        try:
            training_figure(log_history, Path(folder) / "training.png")
        except Exception as e:  # a picture is never worth the adapter
            logger.warning("training.png not written: %s: %s", type(e).__name__, e)

    return extras


# ---- evaluation figure --------------------------------------------------------------------------------------
def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = RELIABILITY_BINS) -> list[dict]:
    """The reliability diagram's bins: rows binned by their top probability into `bins` equal-width bins over
    [0, 1] (right-closed, the first also holds 0, as `calibration.ece`), with each non-empty bin's
    row count, mean confidence and accuracy."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        rows = which == b
        if rows.any():
            out.append({"low": b / bins, "high": (b + 1) / bins, "rows": int(rows.sum()),
                        "confidence": float(confidence[rows].mean()), "accuracy": float(correct[rows].mean())})
    return out


def evaluation_figure(path: str | Path, labels, probs, raw_probs, label_names: Sequence[str], *,
                      title: str | None = None, checked: bool = True) -> Path:
    """One PNG at `path`: the confusion matrix (counts), the reliability diagram of `raw_probs` (uncalibrated)
    and `probs` (calibrated; `raw_probs` None: one curve) with their ECE, and accuracy against coverage (the
    accuracy of the rows whose confidence is at least a threshold, against the share of rows kept).

    `checked` (default): write atomically, and refuse (UserError) to replace a file that is not an earlier
    picture of ours."""
    from .calibration import coverage_table, ece

    path = Path(path)
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    raw = None if raw_probs is None else np.asarray(raw_probs, dtype=np.float64)
    names = [str(n) for n in label_names]
    if probs.ndim != 2 or len(probs) != len(labels) or probs.shape[1] != len(names) or not len(labels):
        raise ValueError(f"expected n labels and (n, {len(names)}) probabilities with n > 0, got "
                         f"{labels.shape} and {probs.shape}")
    if raw is not None and raw.shape != probs.shape:
        raise ValueError(f"raw_probs has shape {raw.shape}, probs {probs.shape}")
    if checked:  # before drawing: a refused path costs nothing
        check_output_file(path, "plot")

    fonts = Fonts([*names, title or ""])
    shown = [n if fonts.can_draw(n) else str(i) for i, n in enumerate(names)]
    hidden = [i for i, n in enumerate(names) if shown[i] != n]
    mapping = "; ".join(f"{i} = {n}" for i, n in enumerate(names))
    if hidden:
        logger.warning("no font with CJK glyphs found: the picture shows label ids (%s); install one "
                       "(fonts-noto-cjk or fonts-wqy-microhei on Debian/Ubuntu, or pip install mplfonts) or set %s",
                       mapping, FONT_ENV)
    import matplotlib

    with matplotlib.rc_context(fonts.rc()):
        k = len(names)
        fig = _new_figure(15, 5.2 + (0.2 if hidden else 0))
        cm_ax, rel_ax, cov_ax = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1.1, 1.1]})
        _confusion(cm_ax, labels, probs.argmax(axis=1), shown)
        _reliability(rel_ax, labels, probs, raw, ece)
        _coverage(cov_ax, labels, probs, raw, coverage_table)
        accuracy = float((probs.argmax(axis=1) == labels).mean())
        heading = f"n = {len(labels):,}   accuracy {accuracy:.4f}   {k} labels"
        if title:
            heading = (title if fonts.can_draw(title) else "".join(c if fonts.can_draw(c) else "?" for c in title)) \
                      + "\n" + heading
        fig.suptitle(heading)
        if hidden:
            fig.supxlabel(f"Label names of {', '.join(map(str, hidden))} need a CJK font (none found): shown as "
                          "label ids; the names are in this PNG's Description text and in the adapter's run.json.",
                          fontsize="small", color="0.3")
        data = _png(fig, "evaluation", description=f"labels: {mapping}")
    return _write(path, data, checked=checked)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _confusion(ax, labels: np.ndarray, predicted: np.ndarray, shown: list[str]) -> None:
    k = len(shown)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    high = matrix.max() or 1
    size = "medium" if k <= 4 else "small" if k <= 8 else "x-small"
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, f"{count:,}", ha="center", va="center", fontsize=size,
                color="white" if count > 0.55 * high else "black")
    ax.set_xticks(range(k), shown, rotation=0 if k <= 4 else 45, ha="center" if k <= 4 else "right")
    ax.set_yticks(range(k), shown)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title("Confusion matrix (rows: true, counts)")
    ax.figure.colorbar(image, ax=ax, shrink=0.8, label="rows")


def _reliability(ax, labels: np.ndarray, probs: np.ndarray, raw: np.ndarray | None, ece) -> None:
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.5", linewidth=1, label="perfect calibration")
    curves = [(raw, "uncalibrated", "tab:orange", "s"), (probs, "calibrated", "tab:blue", "o")] if raw is not None \
        else [(probs, "model", "tab:blue", "o")]
    share = ax.twinx()
    width = 1 / RELIABILITY_BINS
    for i, (p, name, color, marker) in enumerate(curves):
        table = reliability_bins(p, labels)
        x = [b["confidence"] for b in table]
        y = [b["accuracy"] for b in table]
        ax.plot(x, y, marker=marker, color=color, linewidth=1.4, markersize=5,
                label=f"{name} (ECE {ece(p, labels, bins=RELIABILITY_BINS):.4f})")
        offset = (i - (len(curves) - 1) / 2) * width / len(curves)
        share.bar([b["low"] + width / 2 + offset for b in table], [b["rows"] / len(labels) for b in table],
                  width=width / len(curves), color=color, alpha=0.18, linewidth=0)
    share.set_ylim(0, 4)  # the bars stay in the bottom quarter
    share.set_yticks([0, 0.5, 1], ["0", "50%", "100%"])
    share.set_ylabel("rows in the bin (bars)", loc="bottom", fontsize="small")
    ax.set_zorder(share.get_zorder() + 1)
    ax.patch.set_visible(False)
    low = max(0.0, min(1 / probs.shape[1], 0.5) - 0.05)
    ax.set_xlim(low, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"confidence (top probability; mean of each of {RELIABILITY_BINS} equal-width bins)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title("Reliability diagram")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")


def _coverage(ax, labels: np.ndarray, probs: np.ndarray, raw: np.ndarray | None, coverage_table) -> None:
    curves = [(probs, "calibrated" if raw is not None else "model", "tab:blue")]
    for p, name, color in curves:
        confidence = p.max(axis=1)
        thresholds = np.unique(np.quantile(confidence, np.linspace(0, 1, 201)))
        table = [r for r in coverage_table(p, labels, thresholds) if r["accuracy"] is not None]
        ax.plot([r["kept"] for r in table], [r["accuracy"] for r in table], color=color, linewidth=1.6,
                label=f"{name}: accuracy of rows with confidence ≥ t")
        marks = [r for r in coverage_table(p, labels, (0.6, 0.7, 0.8, 0.9, 0.95, 0.99))
                 if r["accuracy"] is not None and r["kept"] > 0]
        ax.plot([r["kept"] for r in marks], [r["accuracy"] for r in marks], "o", color=color, markersize=4)
        last = None
        for r in marks:  # a label where there is room for it
            if last is not None and abs(r["kept"] - last) < 0.1:
                continue
            last = r["kept"]
            ax.annotate(f"t={r['threshold']:g}", (r["kept"], r["accuracy"]), textcoords="offset points",
                        xytext=(-3, -11), ha="right", fontsize="x-small", color="0.25")
    accuracy = float((probs.argmax(axis=1) == labels).mean())
    ax.axhline(accuracy, color="0.6", linestyle=":", linewidth=1, label=f"all rows: {accuracy:.4f}")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(max(0.0, min(accuracy, 1.0) - 0.05 - (1 - accuracy) * 0.2), 1.005)
    ax.set_xlabel("share of rows kept (confidence ≥ threshold t)")
    ax.set_ylabel("accuracy of the rows kept")
    ax.set_title("Accuracy vs coverage")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")


if __name__ == "__main__":  # python -m weibo_sentiment.plots: which CJK font would be used
    found = cjk_font()
    print(f"CJK font: {found[0]} ({found[1]})" if found else "no CJK font found", file=sys.stdout)
