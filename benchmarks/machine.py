"""What machine a benchmark ran on: every figure is quoted with the CPU that produced it."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (e.g. "AMD EPYC"), from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_report(report: dict, markdown: str, output: str | Path) -> None:
    """A benchmark's report as Markdown at `output` and as JSON beside it; the Markdown also on stdout."""
    import json

    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    out.write_text(markdown, encoding="utf-8")
    print(markdown)
