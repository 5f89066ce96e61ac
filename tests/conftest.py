"""Shared fixtures: tiny random GPT-2 bases and adapters built once per session, and a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from weibo_sentiment.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WEIBO_SHARED", ROOT.parent / "shared")).resolve()
SAMPLE = ROOT / "examples" / "weibo_sample.csv"


def shared(*parts: str) -> Path:
    """A path under ../shared; a missing one fails the test with a clear message (never a silent skip)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"{path} is missing: this test needs the project's shared data beside the repository "
                    f"(../shared), or WEIBO_SHARED pointing at it", pytrace=False)
    return path


@pytest.fixture(scope="session")
def real_vocab() -> Path:
    return shared("models", "gpt2-chinese-cluecorpussmall", "vocab.txt")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, real_vocab) -> Path:
    """A 2-layer, 128-wide GPT-2 with random weights and the real 21,128-entry vocabulary."""
    from weibo_sentiment.modeling import init_model

    return init_model(tmp_path_factory.mktemp("bases") / "tiny", "tiny", vocab_file=real_vocab, seed=0)


@pytest.fixture(scope="session")
def sample_adapter(tmp_path_factory, tiny_base) -> Path:
    """A binary adapter trained briefly on the shipped sample (behaviour, not accuracy)."""
    from weibo_sentiment.training import TrainConfig, train

    out = tmp_path_factory.mktemp("adapters") / "sample"
    # A 20% validation split (94 rows): enough rows and errors for a temperature to be fitted (calibration.py).
    train(TrainConfig(data=str(SAMPLE), base_model=str(tiny_base), output=str(out), epochs=2, lr=2e-3,
                      validation_split=0.2, logging_steps=1000))
    return out


@pytest.fixture
def adapter_copy(tmp_path, sample_adapter) -> Path:
    """A private copy of the sample adapter, for tests that modify it."""
    return Path(shutil.copytree(sample_adapter, tmp_path / "adapter"))


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def cli(capsys):
    """Run `weibo-sentiment ARGS` in this process and capture its exit code and output."""

    def run(*args: str) -> CliResult:
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse errors
            code = e.code
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def run_subprocess(*args: str, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real console entry point in a fresh process."""
    return subprocess.run([sys.executable, "-m", "weibo_sentiment", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path
