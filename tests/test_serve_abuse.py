"""The server under abuse: floods, abandoned requests, cross-site pages, adapter-name tricks, fuzzing."""

from __future__ import annotations

import json
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from weibo_sentiment.errors import UserError
from weibo_sentiment.inference import Predictor
from weibo_sentiment.serve import create_app

from .serving_helpers import running
from .test_serve import TEXTS, Gated, assert_close, flipped_copy, probs, wait_until


@pytest.fixture(scope="module")
def flipped(tmp_path_factory, sample_adapter) -> Path:
    return flipped_copy(sample_adapter, tmp_path_factory.mktemp("abuse") / "flipped")


@pytest.fixture(scope="module")
def predictor(sample_adapter, flipped) -> Predictor:
    return Predictor.from_adapters({"sample": sample_adapter, "flipped": flipped}, device="cpu")


# ---- backpressure -----------------------------------------------------------------------------------------
class Slow(Gated):
    """A model that is busy: each call waits for the gate (see Gated), then takes `delay` seconds more; it
    counts the texts it computes."""

    def __init__(self, inner: Predictor, delay: float):
        super().__init__(inner)
        self.delay, self.texts = delay, 0

    def predict(self, texts, adapter=None, batch_size=32):
        self.texts += len(texts)
        time.sleep(self.delay)
        return super().predict(texts, adapter, batch_size)


def send_and_close(url: str, body: bytes) -> None:
    """A raw client that sends a whole request and hangs up without reading the answer."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        time.sleep(0.05)  # long enough for the server to queue it


def impatient(url: str, body: dict) -> None:
    """A client that gives up (and closes its connection) long before the model could answer."""
    try:
        httpx.post(f"{url}/v1/predict", json=body, timeout=0.2)
    except httpx.TimeoutException:
        return
    raise AssertionError("the request was answered within 0.2 s")


def test_abandoned_requests_are_dropped_and_healthz_stays_quick(predictor):
    slow = Slow(predictor, delay=0.2)
    app = create_app(slow)
    texts = TEXTS * 4  # 16 texts a request
    body = {"texts": texts}
    impatient_n, raw_n = 48, 16
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(16) as pool:
        first = pool.submit(client.post, "/v1/predict", json={"texts": TEXTS})
        assert slow.entered.wait(timeout=60)  # the model is busy with it until the gate opens
        floods = [pool.submit(impatient, url, body) for _ in range(impatient_n)]
        floods += [pool.submit(send_and_close, url, json.dumps(body).encode()) for _ in range(raw_n)]
        latencies = []
        while not all(f.done() for f in floods):
            started = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.05)
        for f in floods:
            f.result()
        # Every flood client has gone: their requests leave the queue without waiting for the model.
        wait_until(lambda: client.get("/healthz").json()["pending"] == 0, "the abandoned requests to leave")
        health = client.get("/healthz").json()
        slow.open.set()
        assert first.result().status_code == 200
        reply = client.post("/v1/predict", json={"texts": TEXTS})  # a patient client still gets its answer
        assert reply.status_code == 200
        model_calls = client.get("/healthz").json()["model_calls"]
    sent = (impatient_n + raw_n) * len(texts)
    assert max(latencies) < 1.0, latencies  # the event loop never waits for the model
    # None of the flood reached the model (today's code computed all 1,024 of its texts once the gate opened).
    assert (slow.texts, model_calls) == (2 * len(TEXTS), 2), (slow.texts, sent)
    assert health["pending"] == health["pending_texts"] == 0
    # A raw client may hang up before its body is read: then it never queues, and is not counted as dropped.
    assert impatient_n <= health["dropped_requests"] <= impatient_n + raw_n
    assert health["dropped_texts"] == health["dropped_requests"] * len(texts)


def test_a_full_queue_answers_503_with_retry_after(predictor):
    gated = Gated(predictor)
    app = create_app(gated, max_texts=4, max_queue=8)
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(4) as pool:
        first = pool.submit(client.post, "/v1/predict", json={"texts": ["先来的"]})
        assert gated.entered.wait(timeout=60)  # the model is busy with it; the queue is empty
        queued = [pool.submit(client.post, "/v1/predict", json={"texts": TEXTS}) for _ in range(2)]
        wait_until(lambda: app.state.batcher.pending == 2, "two requests to queue")
        health = client.get("/healthz").json()
        assert (health["pending"], health["pending_texts"], health["max_queue"]) == (2, 8, 8)
        reply = client.post("/v1/predict", json={"texts": ["多一条"]})
        assert reply.status_code == 503
        assert reply.json() == {"error": "the server is busy: 8 texts are waiting (the limit is 8); retry in 1 s"}
        assert reply.headers["retry-after"] == "1" and reply.headers["content-type"] == "application/json"
        gated.open.set()
        assert first.result().status_code == 200
        assert [r.result().status_code for r in queued] == [200, 200]
        assert client.post("/v1/predict", json={"texts": TEXTS}).status_code == 200  # room again
    with pytest.raises(UserError, match=r"^--max-queue \(8\) must be at least --max-texts \(256\)"):
        create_app(predictor, max_queue=8)


def test_serve_command_takes_max_queue(cli, sample_adapter):
    result = cli("serve", "--adapter", sample_adapter, "--port", "0", "--max-queue", "10")
    assert result.code == 2
    assert result.err.strip().splitlines()[-1] == (
        "error: --max-queue (10) must be at least --max-texts (256): a full request must fit in the queue")


# ---- cross-site requests ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(predictor):
    with running(create_app(predictor)) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


NOT_JSON = {"error": "send a JSON body with 'Content-Type: application/json'"}
BODY = json.dumps({"texts": ["好"]}).encode()


@pytest.mark.parametrize("content_type", [None, "text/plain", "text/plain;charset=UTF-8",
                                          "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                          "application/vnd.api+json", "application/jsonx", "text/json"])
def test_a_post_must_say_it_is_json(server, content_type):
    headers = {"content-type": content_type} if content_type else {}
    reply = server.post("/v1/predict", content=BODY, headers=headers)
    assert (reply.status_code, reply.json()) == (415, NOT_JSON)


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON;charset=UTF-8"])
def test_json_content_types_are_accepted(server, content_type):
    assert server.post("/v1/predict", content=BODY, headers={"content-type": content_type}).status_code == 200


def own_origin(client: httpx.Client) -> str:
    return str(client.base_url).rstrip("/")


def test_state_changing_requests_from_other_sites_are_refused(server):
    port = urlsplit(own_origin(server)).port
    json_ = {"content-type": "application/json"}
    for origin in ("http://evil.example", f"http://localhost:{port + 1}", f"http://127.0.0.1:{port + 1}",
                   f"http://127.0.0.1.evil.example:{port}", "null", f"http://localhost:{port}"):
        reply = server.post("/v1/predict", content=BODY, headers={**json_, "origin": origin})
        assert reply.status_code == 403, origin
        assert reply.json() == {"error": f"cross-origin request refused (Origin: {origin}): use this server's own "
                                         f"page or a client"}
    for site in ("cross-site", "same-site"):  # every port of localhost is the same site
        reply = server.post("/v1/predict", content=BODY, headers={**json_, "sec-fetch-site": site})
        assert (reply.status_code, reply.json()) == (403, {
            "error": f"cross-site request refused (Sec-Fetch-Site: {site}): use this server's own page or a client"})
    for method in ("PUT", "PATCH", "DELETE"):
        reply = server.request(method, "/v1/adapters/sample", headers={"origin": "http://evil.example"})
        assert reply.status_code == 403, method
    # Its own page's requests and clients that are not browsers pass.
    own = {**json_, "origin": own_origin(server), "sec-fetch-site": "same-origin"}
    assert server.post("/v1/predict", content=BODY, headers=own).status_code == 200
    assert server.post("/v1/predict", content=BODY, headers={**json_, "sec-fetch-site": "none"}).status_code == 200
    assert server.post("/v1/predict", content=BODY, headers=json_).status_code == 200
    # Reading is not state-changing: a GET from elsewhere is the browser's same-origin policy's business.
    assert server.get("/healthz", headers={"origin": "http://evil.example"}).status_code == 200


# ---- adapter management -----------------------------------------------------------------------------------
@pytest.fixture
def root(tmp_path, sample_adapter, flipped) -> Path:
    base = tmp_path / "root"
    base.mkdir()
    shutil.copytree(sample_adapter, base / "v1")
    shutil.copytree(flipped, base / "v2")
    return base


@pytest.fixture
def managed(sample_adapter, root):
    pred = Predictor.from_adapters({"sample": sample_adapter}, device="cpu")
    with running(create_app(pred, adapter_root=root)) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def test_a_cross_site_page_cannot_swap_adapters(managed):
    evil = {"origin": "http://evil.example"}
    reply = managed.post("/v1/adapters", json={"name": "sample", "path": "v2"}, headers=evil)
    assert reply.status_code == 403
    reply = managed.post("/v1/adapters", content=json.dumps({"name": "sample", "path": "v2"}),
                         headers={"content-type": "text/plain"})
    assert (reply.status_code, reply.json()) == (415, NOT_JSON)
    assert managed.get("/v1/adapters").json()["adapters"][0]["revision"] == 1


def test_the_hot_swap_staging_name_is_an_ordinary_adapter_name(managed):
    """`alpha__incoming` was the name a hot swap of `alpha` staged its new weights under."""
    assert managed.post("/v1/adapters", json={"name": "alpha__incoming", "path": "v1"}).status_code == 200
    assert managed.post("/v1/adapters", json={"name": "alpha", "path": "v1"}).status_code == 200
    before = managed.post("/v1/predict", json={"texts": TEXTS, "adapter": "alpha__incoming"}).json()
    swap = managed.post("/v1/adapters", json={"name": "alpha", "path": "v2"})
    assert (swap.status_code, swap.json()["revision"]) == (200, 2)
    after = managed.post("/v1/predict", json={"texts": TEXTS, "adapter": "alpha__incoming"})
    assert after.status_code == 200, after.json()
    assert_close(probs(after.json()), probs(before))
    swapped = managed.post("/v1/predict", json={"texts": TEXTS, "adapter": "alpha"}).json()
    assert_close(probs(swapped), [row[::-1] for row in probs(before)])


def test_the_default_adapter_is_removed_only_with_a_successor(managed):
    assert managed.post("/v1/adapters", json={"name": "other", "path": "v2"}).status_code == 200
    assert managed.post("/v1/adapters", json={"name": "third", "path": "v1"}).status_code == 200
    reply = managed.delete("/v1/adapters/sample")
    assert (reply.status_code, reply.json()) == (409, {
        "error": "cannot remove 'sample': it is the default adapter; name the next default with ?default=NAME "
                 "(one of: other, third)"})
    reply = managed.delete("/v1/adapters/sample", params={"default": "nope"})
    assert (reply.status_code, reply.json()) == (404, {
        "error": "unknown adapter 'nope' (loaded: sample, other, third)"})
    reply = managed.delete("/v1/adapters/sample", params={"default": "sample"})
    assert (reply.status_code, reply.json()) == (409, {
        "error": "cannot remove 'sample' and keep it the default: name another adapter"})
    assert managed.get("/v1/adapters").json()["default"] == "sample"  # nothing changed
    reply = managed.delete("/v1/adapters/sample", params={"default": "third"})
    assert (reply.status_code, reply.json()) == (200, {"removed": "sample", "default": "third"})
    listed = managed.get("/v1/adapters").json()
    assert listed["default"] == "third" and [a["default"] for a in listed["adapters"]] == [False, True]
    assert managed.post("/v1/predict", json={"texts": ["好"]}).json()["adapter"] == "third"
    # Another adapter (not the default) needs no successor; and the default can change without removing.
    reply = managed.put("/v1/default", json={"adapter": "other"})
    assert (reply.status_code, reply.json()["default"]) == (200, True)
    assert managed.post("/v1/predict", json={"texts": ["好"]}).json()["adapter"] == "other"
    assert managed.delete("/v1/adapters/third").json() == {"removed": "third", "default": "other"}
    reply = managed.put("/v1/default", json={"adapter": "gone"})
    assert (reply.status_code, reply.json()) == (404, {"error": "unknown adapter 'gone' (loaded: other)"})


def test_changing_the_default_needs_the_adapter_root(server):
    reply = server.put("/v1/default", json={"adapter": "flipped"})
    assert (reply.status_code, reply.json()) == (
        403, {"error": "loading adapters over HTTP is off: start the server with --adapter-root DIR"})


# ---- property-based fuzzing of the whole API from its OpenAPI schema ---------------------------------------

FUZZ_LIMITS = {"max_texts": 8, "max_chars": 200}


def api_schema():
    """The app's OpenAPI schema, built without a model (its routes do not depend on one). Loaded eagerly:
    schemathesis's lazy `from_fixture` loader fails on pytest 9 (it sets `node._nodeid`)."""
    return create_app(SimpleNamespace(adapters={}, default=None), **FUZZ_LIMITS).openapi()


# A request over a size limit is refused with 413, which schemathesis does not count as a rejection by default.
REJECTED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
schema = schemathesis.openapi.from_dict(api_schema(), config=schemathesis.Config.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REJECTED}}}))


@pytest.fixture(scope="module")
def fuzz_url(sample_adapter, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-root")
    shutil.copytree(sample_adapter, root / "v1")
    pred = Predictor.from_adapters({"sample": sample_adapter}, device="cpu")
    with running(create_app(pred, adapter_root=root, **FUZZ_LIMITS)) as url:
        yield url


@schema.parametrize()
@settings(max_examples=100, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_get_no_5xx_and_match_the_schema(case, fuzz_url):
    """Every operation (positive and negative cases): no 5xx, and status codes, content types and bodies as
    the schema declares them."""
    case.call_and_validate(base_url=fuzz_url, timeout=30)
