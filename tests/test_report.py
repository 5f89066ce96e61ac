"""Corrected shares (issue 18): domains stored in the adapter, `report` on a synthetic shift with known true shares,
its outputs, and its refusals (exit 2, one line).

Most tests need no model: a stand-in adapter directory holds the domain records, and the rows are "scored" by a
synthetic classifier whose errors are known. One test runs the real commands on the sample adapter.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from weibo_sentiment import report
from weibo_sentiment.adapters import info
from weibo_sentiment.calibration import softmax
from weibo_sentiment.cli.models import format_info
from weibo_sentiment.domains import (
    adapter_fingerprint,
    domain_path,
    fit_domain,
    list_domains,
    load_domain,
    save_domain,
)
from weibo_sentiment.errors import UserError

LABELS = ["negative", "positive"]
TRUE_NEGATIVE = [0.15, 0.30, 0.45, 0.60, 0.75, 0.90]  # one day each
POSTS_PER_DAY = 1500
TOLERANCE = 0.05  # corrected shares within this of the truth; counted ones (at the ends) outside it
BOOTSTRAP = 100


def weak_logits(labels: np.ndarray, rng) -> np.ndarray:
    """A classifier right about 80% of the time, and biased towards `positive` (its errors are what CC counts)."""
    margin = rng.normal(np.where(labels == 1, 1.6, -0.8), 1.4)
    return np.stack([-margin / 2, margin / 2], axis=1)


@pytest.fixture
def adapter(tmp_path):
    """A stand-in adapter directory: what read_run and the domain records need, no model."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    save_file({"base_model.model.score.weight": np.zeros((2, 8), np.float32)},
              str(folder / "adapter_model.safetensors"))
    (folder / "run.json").write_text(json.dumps({"label_names": LABELS, "temperature": 2.0}))
    rng = np.random.default_rng(1)
    labels = (rng.random(1000) < 0.5).astype(int)
    save_domain(folder, fit_domain("mine", weak_logits(labels, rng), labels, LABELS, adapter_fingerprint(folder),
                                   "synthetic"))
    return folder


@pytest.fixture
def shifted(tmp_path, adapter):
    """Scored rows as predict writes them (probabilities at the adapter's temperature 2), six days whose true
    negative share moves from 0.15 to 0.90."""
    rng = np.random.default_rng(2)
    rows = []
    for day, share in enumerate(TRUE_NEGATIVE):
        negatives = int(share * POSTS_PER_DAY)
        labels = np.array([0] * negatives + [1] * (POSTS_PER_DAY - negatives))
        probs = softmax(weak_logits(labels, rng), 2.0)
        for i, p in enumerate(probs):
            rows.append({"created_at": f"2024-05-{day + 1:02d}T{i % 24:02d}:{i % 60:02d}:00+08:00",
                         "label": int(p.argmax()), "label_name": LABELS[int(p.argmax())],
                         "confidence": round(float(p.max()), 6), "prob_negative": round(float(p[0]), 6),
                         "prob_positive": round(float(p[1]), 6), "topic": "A" if i % 3 else "B"})
    path = tmp_path / "scored.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_corrected_shares_follow_a_known_shift_and_counted_ones_do_not(adapter, shifted, tmp_path):
    frame = report(shifted, adapter, domain="mine", time_column="created_at", every="1d", n_bootstrap=BOOTSTRAP,
                   output=tmp_path / "r.csv", plot=tmp_path / "r.png")
    assert list(frame["n"]) == [POSTS_PER_DAY] * 6
    truth = np.array(TRUE_NEGATIVE)
    corrected = frame["share_negative"].to_numpy()
    counted = frame["counted_negative"].to_numpy()
    assert np.abs(corrected - truth).max() < TOLERANCE
    assert np.abs(counted - truth)[[0, -1]].min() > TOLERANCE  # the biased count misses at both ends
    covered = (frame["low_negative"] <= truth) & (truth <= frame["high_negative"])
    assert covered.sum() >= 5  # 95% intervals: all six, or five by chance
    assert not frame["few_posts"].any() and not frame["domain_sample_small"].any()
    assert frame.attrs["domain"] == "mine" and frame.attrs["note"] == ""
    assert pd.read_csv(tmp_path / "r.csv")["n"].sum() == 6 * POSTS_PER_DAY
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_scored_rows_are_brought_to_the_domains_temperature(adapter, shifted):
    """The rows were written at temperature 2: read as raw (temperature 1) they give other posteriors, and PACC,
    which is not blind to calibration, other shares."""
    kept = report(shifted, adapter, domain="mine", n_bootstrap=BOOTSTRAP)
    wrong = report(shifted, adapter, domain="mine", n_bootstrap=BOOTSTRAP, scored_with="raw")
    truth = np.mean(TRUE_NEGATIVE)
    assert abs(kept.loc[0, "share_negative"] - truth) < 0.02
    assert abs(wrong.loc[0, "share_negative"] - kept.loc[0, "share_negative"]) > 0.005


def test_groups_outputs_and_gaps(adapter, shifted, tmp_path):
    frame = report(shifted, adapter, domain="mine", group_column="topic", time_column="created_at", every="1w",
                   n_bootstrap=BOOTSTRAP, output=tmp_path / "r.json")
    assert set(frame["group"]) == {"A", "B"} and frame["n"].sum() == 6 * POSTS_PER_DAY
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["report"]["method"] == "pacc" and len(written["rows"]) == len(frame)
    report(shifted, adapter, domain="mine", n_bootstrap=BOOTSTRAP, output=tmp_path / "r.json")  # ours: replaced
    parquet = report(shifted, adapter, domain="mine", n_bootstrap=BOOTSTRAP, output=tmp_path / "r.parquet")
    assert pd.read_parquet(tmp_path / "r.parquet")["n"].tolist() == parquet["n"].tolist()
    # A day without posts is a row with n = 0 (no shares), not a missing day.
    data = pd.read_csv(shifted)
    data = data[~data["created_at"].str.startswith("2024-05-03")]
    data.to_csv(tmp_path / "gap.csv", index=False)
    gap = report(tmp_path / "gap.csv", adapter, domain="mine", time_column="created_at", n_bootstrap=BOOTSTRAP)
    assert gap["n"].tolist() == [POSTS_PER_DAY, POSTS_PER_DAY, 0, POSTS_PER_DAY, POSTS_PER_DAY, POSTS_PER_DAY]
    assert np.isnan(gap.loc[2, "share_negative"]) and gap.loc[2, "few_posts"]


def test_domain_round_trip_and_listing(adapter):
    domain = load_domain(adapter, "mine")
    assert domain.rows == 1000 and sum(domain.counts.values()) == 1000 and domain.label_names == LABELS
    again = fit_domain("again", domain.logits, domain.labels, LABELS, adapter_fingerprint(adapter), "copy")
    save_domain(adapter, again)
    loaded = load_domain(adapter, "again")
    np.testing.assert_allclose(loaded.logits, domain.logits, atol=1e-6)
    assert loaded.temperature == again.temperature and loaded.labels.tolist() == domain.labels.tolist()
    assert [d["name"] for d in list_domains(adapter)] == ["again", "mine"]
    assert "mine: 1000 labelled rows" in format_info(info(adapter))
    # Other weights: the record no longer describes this adapter.
    save_file({"base_model.model.score.weight": np.ones((2, 8), np.float32)},
              str(adapter / "adapter_model.safetensors"))
    with pytest.raises(UserError, match="other weights"):
        load_domain(adapter, "mine")


def test_a_foreign_file_is_never_replaced(adapter, shifted, tmp_path):
    domain = load_domain(adapter, "mine")
    domain_path(adapter, "theirs").write_text('{"mine": "not yours"}')
    domain.name = "theirs"
    with pytest.raises(UserError, match="not a domain record"):
        save_domain(adapter, domain)
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not a report table"):
        report(shifted, adapter, domain="mine", output=tmp_path / "notes.csv")
    assert (tmp_path / "notes.csv").read_text() == "a,b\n1,2\n"


def one_line_error(result) -> str:
    assert result.code == 2, (result.code, result.err)
    lines = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    return lines[0]


def test_bad_inputs_exit_2_with_one_line(adapter, shifted, tmp_path, cli):
    base = ["report", "--input", shifted, "--adapter", adapter, "--bootstrap", "50"]
    assert "no column 'when'" in one_line_error(cli(*base, "--domain", "mine", "--time-column", "when"))
    data = pd.read_csv(shifted)
    data.loc[7, "created_at"] = "yesterday-ish"
    data.to_csv(tmp_path / "bad_time.csv", index=False)
    line = one_line_error(cli(*base[:2], tmp_path / "bad_time.csv", *base[3:], "--domain", "mine",
                              "--time-column", "created_at"))
    assert "row 8" in line and "yesterday-ish" in line
    (tmp_path / "empty.csv").write_text("created_at,prob_negative,prob_positive,label_name,confidence\n")
    assert "no rows" in one_line_error(cli(*base[:2], tmp_path / "empty.csv", *base[3:], "--domain", "mine",
                                           "--time-column", "created_at"))
    line = one_line_error(cli(*base, "--domain", "elsewhere"))
    assert "no domain 'elsewhere'" in line and "known: mine" in line
    assert "no domain 'validation'" in one_line_error(cli(*base))  # the default, absent here
    assert "--every needs --time-column" in one_line_error(cli(*base, "--domain", "mine", "--every", "1d"))
    (tmp_path / "one_class.csv").write_text("label,review\n" + "".join(f"1,好开心{i}\n" for i in range(60)))
    line = one_line_error(cli("calibrate", "--adapter", adapter, "--data", tmp_path / "one_class.csv",
                              "--domain", "onlypositive"))
    assert "no rows labelled negative" in line
    labels = np.ones(100, dtype=int)
    with pytest.raises(UserError, match="no rows of class 0"):
        fit_domain("x", np.zeros((100, 2)), labels, LABELS, "f", "s")


def test_train_calibrate_report_and_domain_on_predict(sample_adapter, adapter_copy, tmp_path, cli):
    """The real commands on the sample adapter: train stored `validation`; calibrate adds a domain; report scores
    posts on the way; predict --domain uses the domain's temperature."""
    from tests.conftest import SAMPLE

    assert (sample_adapter / "domains" / "validation.json").is_file()
    assert cli("calibrate", "--adapter", adapter_copy, "--data", SAMPLE, "--domain", "sample").code == 0
    assert [d["name"] for d in list_domains(adapter_copy)] == ["sample", "validation"]
    posts = pd.read_csv(SAMPLE).head(120)
    posts["day"] = ["2024-06-01"] * 60 + ["2024-06-02"] * 60
    posts.to_csv(tmp_path / "posts.csv", index=False)
    result = cli("report", "--input", tmp_path / "posts.csv", "--adapter", adapter_copy, "--time-column", "day",
                 "--bootstrap", "50", "--output", tmp_path / "shares.csv")
    assert result.code == 0, result.err
    assert "labelled sample of their own" in result.err  # the default domain says what it is
    assert pd.read_csv(tmp_path / "shares.csv")["n"].tolist() == [60, 60]
    assert load_domain(adapter_copy, "sample").temperature != load_domain(adapter_copy, "validation").temperature
    text = ["--adapter", adapter_copy, "--text", "今天好开心[哈哈]"]
    plain, with_domain = cli("predict", *text), cli("predict", *text, "--domain", "sample")
    assert plain.code == 0 and with_domain.code == 0 and "Confidence" in with_domain.out
    assert plain.out != with_domain.out  # the same label, another temperature: another confidence
    assert "no domain 'other'" in one_line_error(cli("predict", *text, "--domain", "other"))
