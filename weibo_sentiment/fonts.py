"""A font for Chinese text in pictures: matplotlib's own (DejaVu Sans) has no CJK glyphs.

`cjk_font()` looks, in this order, at the file named by the environment variable WEIBO_SENTIMENT_FONT, the CJK
families matplotlib knows (Noto Sans CJK, Source Han Sans, WenQuanYi, PingFang, Microsoft YaHei, SimHei...), the
fonts fontconfig lists for Chinese (`fc-list :lang=zh`: fonts installed after matplotlib built its font cache),
the fonts of the `mplfonts` package when it is installed, and the usual macOS and Windows font files. `Fonts`
holds one figure's settings: Latin text stays in DejaVu Sans; only glyphs DejaVu lacks come from the CJK font.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

FONT_ENV = "WEIBO_SENTIMENT_FONT"
# Families with CJK glyphs, most preferred first (simplified Chinese first: the corpus is Weibo).
CJK_FAMILIES = (
    "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN", "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei", "Sarasa Gothic SC", "PingFang SC", "Hiragino Sans GB", "Heiti SC", "STHeiti",
    "Microsoft YaHei", "SimHei", "Noto Sans CJK TC", "Noto Sans CJK JP", "Noto Sans CJK KR", "Source Han Sans",
    "Droid Sans Fallback", "AR PL UMing CN", "AR PL UKai CN", "Noto Serif CJK SC", "SimSun", "Arial Unicode MS",
)
_OS_FONT_FILES = (
    "/System/Library/Fonts/PingFang.ttc", "/System/Library/Fonts/STHeiti Medium.ttc",
    "/System/Library/Fonts/STHeiti Light.ttc", "/System/Library/Fonts/Hiragino Sans GB.ttc",
    "/Library/Fonts/Arial Unicode.ttf", "C:/Windows/Fonts/msyh.ttc", "C:/Windows/Fonts/msyh.ttf",
    "C:/Windows/Fonts/simhei.ttf", "C:/Windows/Fonts/simsun.ttc",
)
_PROBE = "中文正面负面"  # what a CJK font must have, besides the characters asked for


# ---- fonts --------------------------------------------------------------------------------------------------
@functools.cache
def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


@functools.lru_cache(maxsize=1)
def _default_font() -> str:
    from matplotlib import font_manager

    return font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"), fallback_to_default=True)


def _fc_list_files() -> list[str]:
    if not shutil.which("fc-list"):
        return []
    try:
        out = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({line.split(":")[0].strip() for line in out.splitlines() if line.strip()})


def _mplfonts_files() -> list[str]:
    import importlib.util

    spec = importlib.util.find_spec("mplfonts")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / "fonts"
    preferred = ["NotoSansCJKsc-Regular.otf", "SourceHanSansSC-Regular.otf"]
    found = sorted(folder.glob("*.[ot]t[fc]"), key=lambda p: (p.name not in preferred, p.name))
    return [str(p) for p in found]


def _candidates() -> list[str]:
    """Font files that may have CJK glyphs, in order of preference (see the module docstring)."""
    from matplotlib import font_manager

    files: list[str] = []
    if os.environ.get(FONT_ENV):
        files.append(os.environ[FONT_ENV])
    known = {f.name: f.fname for f in font_manager.fontManager.ttflist}
    files += [known[name] for name in CJK_FAMILIES if name in known]
    files += _fc_list_files()
    files += _mplfonts_files()
    files += [f for f in _OS_FONT_FILES if Path(f).is_file()]
    return list(dict.fromkeys(files))


@functools.cache
def _cjk_font(chars: str) -> tuple[str, str] | None:
    """(family name, file) of the first candidate font that has every character of `chars`, added to
    matplotlib's font list when it was not there; None when there is none."""
    from matplotlib import font_manager

    needed = {ord(c) for c in chars}
    for path in _candidates():
        if not Path(path).is_file() or not needed <= _charmap(path):
            continue
        names = [e.name for e in font_manager.fontManager.ttflist if e.fname == path]
        if not names:  # not in matplotlib's font cache (installed later, or not in a system font folder)
            try:
                font_manager.fontManager.addfont(path)
            except (OSError, RuntimeError, ValueError):
                continue
            names = [e.name for e in font_manager.fontManager.ttflist if e.fname == path]
        if names:
            return names[0], path  # a collection's first face (WenQuanYi Micro Hei, not its Mono sibling)
    return None


def cjk_font(texts: Sequence[str] = ()) -> tuple[str, str] | None:
    """(family, file) of a font with CJK glyphs that can draw every character of `texts` that matplotlib's
    default font cannot, or None."""
    missing = _missing(texts, _default_font())
    return _cjk_font("".join(sorted(set(_PROBE) | missing)))


def _missing(texts: Sequence[str], path: str) -> set[str]:
    charmap = _charmap(path)
    return {c for text in texts for c in text if not c.isspace() and ord(c) not in charmap}


class Fonts:
    """The font settings of one figure: DejaVu Sans, with a CJK font behind it when some text needs one."""

    def __init__(self, texts: Sequence[str]):
        self.missing = _missing(texts, _default_font())
        found = _cjk_font("".join(sorted(set(_PROBE) | self.missing))) if self.missing else None
        if self.missing and found is None:
            found = cjk_font()  # draws at least the common characters; the rest become ids
        self.family, self.file = found if found else (None, None)
        self.drawable = frozenset(_charmap(_default_font()) | (_charmap(self.file) if self.file else frozenset()))

    def can_draw(self, text: str) -> bool:
        return all(c.isspace() or ord(c) in self.drawable for c in text)

    def rc(self) -> dict:
        families = ["DejaVu Sans"] + ([self.family] if self.family else [])
        return {"font.family": families, "axes.unicode_minus": True, "svg.fonttype": "none"}
