"""The feedback store (crash safety, bounds, foreign files), its export as training data, and POST /v1/feedback."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys

import httpx
import pytest

from weibo_sentiment.data import load_labelled
from weibo_sentiment.errors import UserError
from weibo_sentiment.feedback import Correction, FeedbackRefused, FeedbackStore, export_training_csv
from weibo_sentiment.inference import Predictor
from weibo_sentiment.serve import create_app

from .conftest import ROOT
from .serving_helpers import running

LABELS = ["negative", "positive"]


def correction(text: str, corrected: str = "positive", predicted: str = "negative", adapter: str = "sample",
               **extra) -> Correction:
    return Correction(text=text, adapter=adapter, predicted_label=predicted, corrected_label=corrected,
                      revision=1, label_names=LABELS, **extra)


# ---- the store -------------------------------------------------------------------------------------------
def test_appended_corrections_read_back_in_order_with_their_time(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.jsonl")
    stored = [store.append(correction(t)) for t in ("好", "服务态度差，价格又贵", "今天\n天气\u2028不错")]
    assert store.read() == stored
    assert all(c.time.endswith("+00:00") for c in stored)
    lines = (tmp_path / "feedback.jsonl").read_bytes().split(b"\n")
    assert len(lines) == 4 and lines[-1] == b""  # one line each, the last one ended
    assert set(json.loads(lines[0])) >= {"text", "adapter", "revision", "predicted_label", "corrected_label", "time"}


def test_a_torn_last_line_is_skipped_on_read_and_moved_aside_by_the_next_append(tmp_path, caplog):
    path = tmp_path / "feedback.jsonl"
    store = FeedbackStore(path)
    first = store.append(correction("第一条"))
    whole = path.read_bytes()
    torn = correction("被打断的一条").as_line()[:25]  # a writer killed in the middle of its write
    path.write_bytes(whole + torn)
    assert store.read() == [first]
    assert "torn last line" in caplog.text
    second = store.append(correction("第二条"))
    assert store.read() == [first, second]
    assert path.read_bytes() == whole + second.as_line()
    assert (tmp_path / "feedback.jsonl.torn").read_bytes() == torn + b"\n"  # kept for a person to read


def test_a_store_that_is_only_a_torn_line_is_repaired_too(tmp_path):
    path = tmp_path / "feedback.jsonl"
    path.write_bytes(b'{"text": "half')
    store = FeedbackStore(path)
    assert store.read() == []
    stored = store.append(correction("好"))
    assert store.read() == [stored]


# The package's __init__ imports torch (seconds); the writer needs the store alone, so it skips it.
WRITER = """
import sys, types
package = types.ModuleType("weibo_sentiment")
package.__path__ = [sys.argv[3]]
sys.modules["weibo_sentiment"] = package
from weibo_sentiment.feedback import Correction, FeedbackStore
store = FeedbackStore(sys.argv[1])
for i in range(100000):
    store.append(Correction(text=f"{sys.argv[2]}-{i} " + "长文本" * (i % 50), adapter="a", predicted_label="negative",
                            corrected_label="positive", label_names=["negative", "positive"]))
    print(i, flush=True)  # acknowledged: append has returned, so the line is on disk
"""


def test_every_acknowledged_correction_survives_kill_9_of_concurrent_writers(tmp_path):
    path = tmp_path / "feedback.jsonl"
    package = str(ROOT / "weibo_sentiment")
    writers = {name: subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, package],
                                      stdout=subprocess.PIPE, text=True) for name in ("w1", "w2")}
    seen = {}
    for name, proc in writers.items():
        seen[name] = [proc.stdout.readline() for _ in range(40)]  # both write while one of them is killed
        assert all(seen[name]), proc.wait()
    acknowledged = {}
    for name, proc in writers.items():
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        lines = [*seen[name], *proc.stdout.read().splitlines()]
        acknowledged[name] = [int(line) for line in lines if line.strip()]
        proc.stdout.close()
    stored = {c.text.split(" ")[0] for c in FeedbackStore(path).read()}  # parseable, torn tail aside
    for name, numbers in acknowledged.items():
        assert {f"{name}-{i}" for i in range(max(numbers) + 1)} <= stored
    after = FeedbackStore(path).append(correction("之后"))
    assert FeedbackStore(path).read()[-1] == after


def test_a_correction_past_the_bounds_is_refused_with_its_status(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.jsonl", max_bytes=600, max_line_bytes=400)
    with pytest.raises(FeedbackRefused) as e:
        store.append(correction("长" * 200))
    assert e.value.status == 413 and "limit per correction is 400" in str(e.value)
    while True:
        try:
            store.append(correction("一条"))
        except FeedbackRefused as full:
            assert full.status == 507 and "the feedback store is full" in str(full)
            break
    assert 0 < len(store.read()) and (tmp_path / "feedback.jsonl").stat().st_size <= 600


def test_a_file_that_is_not_a_store_is_never_written(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text('{"mine": 1}\n', encoding="utf-8")
    with pytest.raises(UserError, match="is not a feedback store written by weibo-sentiment"):
        FeedbackStore(path).append(correction("好"))
    assert path.read_text(encoding="utf-8") == '{"mine": 1}\n'
    with pytest.raises(UserError, match="does not exist"):
        FeedbackStore(tmp_path / "nowhere" / "feedback.jsonl").check()


# ---- export ----------------------------------------------------------------------------------------------
def test_export_round_trips_into_training_data_with_the_latest_correction_per_text(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.jsonl")
    store.append(correction("好吃", corrected="negative", predicted="positive"))
    store.append(correction("太差了", corrected="negative"))
    store.append(correction("好吃", corrected="positive", predicted="positive"))  # a second thought wins
    out = tmp_path / "train.csv"
    assert export_training_csv(store.path, out) == 2
    data = load_labelled(out, label_names=LABELS)
    assert (data.texts, data.labels) == (["好吃", "太差了"], [1, 0])
    assert export_training_csv(store.path, out) == 2  # its own export is replaced
    assert out.read_text(encoding="utf-8").splitlines()[0] == "label,review,label_name,adapter,corrected_at"


def test_export_refuses_to_replace_other_files_or_mix_label_sets(tmp_path, cli):
    store = FeedbackStore(tmp_path / "feedback.jsonl")
    store.append(correction("好"))
    store.append(Correction(text="一般", adapter="three", predicted_label="neu", corrected_label="neg",
                            label_names=["neg", "neu", "pos"]))
    theirs = tmp_path / "theirs.csv"
    theirs.write_text("label,review\n1,mine\n", encoding="utf-8")
    result = cli("feedback", "export", "--store", store.path, "--output", theirs, "--adapter", "sample")
    assert result.code == 2 and "is not a feedback export written by weibo-sentiment" in result.err
    assert theirs.read_text(encoding="utf-8") == "label,review\n1,mine\n"
    result = cli("feedback", "export", "--store", store.path, "--output", tmp_path / "out.csv")
    assert result.code == 2 and "2 different label sets" in result.err and "\n" not in result.err.strip()
    result = cli("feedback", "export", "--store", store.path, "--output", tmp_path / "out.csv", "--adapter", "three")
    assert result.code == 0
    with (tmp_path / "out.csv").open(encoding="utf-8") as f:
        assert [(r["label"], r["review"]) for r in csv.DictReader(f)] == [("0", "一般")]
    result = cli("feedback", "export", "--store", tmp_path / "missing.jsonl", "--output", tmp_path / "x.csv")
    assert result.code == 2 and "no such feedback store" in result.err


# ---- the server ------------------------------------------------------------------------------------------
BODY = {"text": "服务态度差", "adapter": "sample", "predicted_label": "positive", "corrected_label": "negative"}


@pytest.fixture(scope="module")
def predictor(sample_adapter) -> Predictor:
    return Predictor.from_adapters({"sample": sample_adapter}, device="cpu")


def test_feedback_is_stored_from_the_page_and_from_clients(predictor, tmp_path):
    path = tmp_path / "fb.jsonl"
    with running(create_app(predictor, feedback=path, max_chars=50)) as url, httpx.Client(base_url=url) as client:
        own = {"origin": url, "sec-fetch-site": "same-origin"}  # what the server's own page sends
        reply = client.post("/v1/feedback", json=BODY, headers=own)
        assert reply.status_code == 200, reply.json()
        assert reply.json()["revision"] == 1 and reply.json()["corrected_label"] == "negative"
        assert client.post("/v1/feedback", json={**BODY, "adapter": None, "revision": 3}).status_code == 200
        refusals = [({**BODY, "corrected_label": "angry"}, 409, "corrected_label 'angry' is not a label"),
                    ({**BODY, "adapter": "other"}, 404, "unknown adapter 'other'"),
                    ({**BODY, "text": "长" * 51}, 413, "text has 51 characters; the limit is 50"),
                    ({**BODY, "text": " "}, 422, "text is empty"),
                    ({**BODY, "extra": 1}, 422, "extra: Extra inputs are not permitted")]
        for body, status, message in refusals:
            reply = client.post("/v1/feedback", json=body)
            assert (reply.status_code, message in reply.json()["error"]) == (status, True), reply.json()
    stored = FeedbackStore(path).read()
    assert [(c.adapter, c.revision, c.corrected_label, c.label_names) for c in stored] == [
        ("sample", 1, "negative", LABELS), ("sample", 3, "negative", LABELS)]


def test_feedback_refuses_cross_site_requests_and_a_missing_api_key(predictor, tmp_path):
    path = tmp_path / "fb.jsonl"
    app = create_app(predictor, feedback=path, api_key="s3cret")
    key = {"authorization": "Bearer s3cret"}
    with running(app) as url, httpx.Client(base_url=url) as client:
        reply = client.post("/v1/feedback", json=BODY, headers={**key, "origin": "http://evil.example"})
        assert (reply.status_code, reply.json()["error"].startswith("cross-origin request refused")) == (403, True)
        reply = client.post("/v1/feedback", json=BODY, headers={**key, "sec-fetch-site": "cross-site"})
        assert reply.status_code == 403
        reply = client.post("/v1/feedback", json=BODY)
        assert (reply.status_code, reply.json()["error"].startswith("this server needs an API key")) == (401, True)
        reply = client.post("/v1/feedback", content=json.dumps(BODY), headers={**key, "content-type": "text/plain"})
        assert reply.status_code == 415
        assert not path.exists()  # nothing refused was stored
        assert client.post("/v1/feedback", json=BODY, headers=key).status_code == 200
    assert len(FeedbackStore(path).read()) == 1


def test_the_store_defaults_to_the_adapter_root_and_is_off_without_either(predictor, tmp_path):
    with running(create_app(predictor, adapter_root=tmp_path)) as url, httpx.Client(base_url=url) as client:
        assert client.post("/v1/feedback", json=BODY).status_code == 200
    assert len(FeedbackStore(tmp_path / "feedback.jsonl").read()) == 1
    with running(create_app(predictor)) as url, httpx.Client(base_url=url) as client:
        reply = client.post("/v1/feedback", json=BODY)
        assert (reply.status_code, reply.json()) == (403, {
            "error": "feedback is off: start the server with --feedback FILE or --adapter-root DIR"})
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(UserError, match="not a feedback store"):
        create_app(predictor, feedback=foreign)


def test_a_full_store_answers_507(predictor, tmp_path):
    app = create_app(predictor, feedback=tmp_path / "fb.jsonl", feedback_max_bytes=250)
    with running(app) as url, httpx.Client(base_url=url) as client:
        assert client.post("/v1/feedback", json=BODY).status_code == 200
        reply = client.post("/v1/feedback", json=BODY)
        assert reply.status_code == 507 and "the feedback store is full" in reply.json()["error"]
    assert len(FeedbackStore(tmp_path / "fb.jsonl").read()) == 1
