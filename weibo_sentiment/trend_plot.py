"""The report's picture (`report --plot FILE.png`): corrected shares over time with their interval band and the
counted share as a thin line; one panel per label shown, one colour per group.

With two labels one panel says everything (the other share is its complement), so only the first label is drawn
(negative, for the Weibo labels): the analyst's usual question. Without a time column, each group is a point with
its interval as an error bar. Chinese label and group names are drawn with a CJK font (fonts.Fonts); the PNG
carries output's `Software` text chunk, so a later report may replace it and nothing else.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from .fonts import Fonts
from .output import SOFTWARE, atomic_open

MAX_GROUPS_DRAWN = 8  # more lines than this are unreadable on one panel: the largest groups are drawn
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


def labels_drawn(label_names: list[str]) -> list[str]:
    return label_names[:1] if len(label_names) == 2 else list(label_names)


def groups_drawn(frame: pd.DataFrame) -> list:
    if "group" not in frame:
        return [None]
    sizes = frame.groupby("group", sort=False)["n"].sum().sort_values(ascending=False, kind="stable")
    return list(sizes.index[:MAX_GROUPS_DRAWN])


def trend_figure(frame: pd.DataFrame, path: str | Path, title: str | None = None,
                 reference: dict[str, pd.Series] | None = None) -> Path:
    """Draw `frame` (report's result, with its attrs) to the PNG `path`, atomically (only over a picture of
    ours). `reference`: known shares per label (indexed like `frame`), drawn as a black dotted line, where a
    benchmark knows the truth."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    attrs = frame.attrs
    labels = labels_drawn(list(attrs["label_names"]))
    groups = groups_drawn(frame)
    title = title or (f"{attrs['method'].upper()}-corrected shares, domain '{attrs['domain']}' "
                      f"({attrs['domain_rows']} labelled posts), {attrs['confidence']:.0%} intervals")
    fonts = Fonts([title, *labels, *(str(g) for g in groups if g is not None)])
    with matplotlib.rc_context({**fonts.rc(), "font.size": 9}):
        fig = Figure(figsize=(11, 3.8 * len(labels) + 0.6), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(labels), 1, squeeze=False)[:, 0]
        for ax, label in zip(axes, labels):
            if "bucket" in frame and attrs.get("every"):
                draw_over_time(ax, frame, label, groups)
                if reference and label in reference:
                    ax.plot(pd.to_datetime(frame["bucket"]).to_numpy(), reference[label].to_numpy(), color="black",
                            linestyle=":", linewidth=1.5, label="true share (known in this test)")
            else:
                draw_per_group(ax, frame, label, groups)
            ax.set_ylabel(f"share of posts: {label}")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")  # beside, never over, the data
        fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize="medium")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", metadata={"Software": SOFTWARE, "Title": "report trend"})
    with atomic_open(path, "wb", encoding=None, kind="plot") as f:
        f.write(buffer.getvalue())
    return Path(path)


def draw_over_time(ax, frame: pd.DataFrame, label: str, groups: list) -> None:
    for colour, group in zip(COLOURS, groups):
        rows = frame if group is None else frame[frame["group"] == group]
        x = pd.to_datetime(rows["bucket"]).to_numpy()
        name = "" if group is None else f"{group}: "
        ax.fill_between(x, rows[f"low_{label}"], rows[f"high_{label}"], color=colour, alpha=0.2, linewidth=0,
                        label=f"{name}interval ({frame.attrs['confidence']:.0%})")
        ax.plot(x, rows[f"share_{label}"], color=colour, linewidth=1.8, marker="o", markersize=3,
                label=f"{name}corrected share")
        ax.plot(x, rows[f"counted_{label}"], color=colour, linewidth=0.8, linestyle="--",
                label=f"{name}counted share (predicted labels)")
        few = rows[rows["few_posts"] & (rows["n"] > 0)]
        if len(few):  # ringed, one legend entry for all groups
            legend = f"fewer than {frame.attrs['min_bucket_posts']} posts" if group == groups[0] else None
            ax.plot(pd.to_datetime(few["bucket"]).to_numpy(), few[f"share_{label}"], linestyle="none", marker="o",
                    markersize=7, markerfacecolor="none", color=colour, label=legend)
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    ax.margins(x=0.01)
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_xlabel(f"bucket start (every {frame.attrs['every']})")


def draw_per_group(ax, frame: pd.DataFrame, label: str, groups: list) -> None:
    rows = frame.set_index("group").loc[groups] if groups != [None] else frame
    x = np.arange(len(rows))
    share = rows[f"share_{label}"].to_numpy(dtype=float)
    error = np.vstack([share - rows[f"low_{label}"].to_numpy(dtype=float),
                       rows[f"high_{label}"].to_numpy(dtype=float) - share])
    ax.errorbar(x, share, yerr=error, fmt="o", capsize=4, color="tab:blue",
                label=f"corrected share, {frame.attrs['confidence']:.0%} interval")
    ax.plot(x, rows[f"counted_{label}"], linestyle="none", marker="x", color="tab:orange",
            label="counted share (predicted labels)")
    ax.set_xticks(x, [str(g) if g is not None else "all posts" for g in (groups if groups != [None] else [None])])
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_xlabel("group")
