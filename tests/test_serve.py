"""The HTTP server: a real uvicorn on a free loopback port, hit over HTTP with httpx."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from weibo_sentiment.errors import UserError
from weibo_sentiment.inference import Predictor
from weibo_sentiment.serve import LOOPBACK_HOSTS, create_app, exposure_warning, public_model_name
from weibo_sentiment.serve.guard import allowed_host_names

from .conftest import ROOT
from .serving_helpers import running

TEXTS = ["这部电影太好看了，我非常喜欢！[哈哈]", "服务态度差", "今天天气不错，心情也很好，出去走走吧",
         "排队两个小时，结果卖完了，真是气死我了[怒]"]


def flipped_copy(src: Path, dst: Path) -> Path:
    """A copy of an adapter whose classifier head rows are swapped: its probabilities are the reverse."""
    shutil.copytree(src, dst)
    weights = dst / "adapter_model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    key = next(k for k in tensors if k.endswith("score.weight"))
    tensors[key] = tensors[key].flip(0).contiguous()
    save_file(tensors, str(weights), metadata=metadata)
    return dst


@pytest.fixture(scope="module")
def flipped(tmp_path_factory, sample_adapter) -> Path:
    return flipped_copy(sample_adapter, tmp_path_factory.mktemp("flipped") / "flipped")


@pytest.fixture(scope="module")
def predictor(sample_adapter, flipped) -> Predictor:
    return Predictor.from_adapters({"sample": sample_adapter, "flipped": flipped}, device="cpu")


@pytest.fixture(scope="module")
def server(predictor):
    """Small limits, so that each of them is cheap to exceed."""
    app = create_app(predictor, max_texts=8, max_chars=100, max_body_bytes=4096)
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


@pytest.fixture
def root(tmp_path, sample_adapter, flipped) -> Path:
    """An adapter root: `v2` (the flipped adapter), plus things a request must not be able to use."""
    base = tmp_path / "root"
    base.mkdir()
    shutil.copytree(flipped, base / "v2")
    outside = Path(shutil.copytree(sample_adapter, tmp_path / "outside"))
    (base / "link_out").symlink_to(outside, target_is_directory=True)
    sneaky = Path(shutil.copytree(flipped, base / "sneaky"))
    (sneaky / "adapter_model.safetensors").unlink()
    (sneaky / "adapter_model.safetensors").symlink_to(outside / "adapter_model.safetensors")
    broken = Path(shutil.copytree(flipped, base / "broken"))
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    return base


@pytest.fixture
def managed(sample_adapter, flipped, root):
    """A private server (tests change its adapters) with adapter management under `root`."""
    pred = Predictor.from_adapters({"sample": sample_adapter}, device="cpu")
    app = create_app(pred, adapter_root=root)
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def probs(reply: dict) -> list[list[float]]:
    return [list(p["probabilities"].values()) for p in reply["predictions"]]


def expected(predictor: Predictor, adapter: str, texts: list[str]) -> list[list[float]]:
    """Each text's probabilities when predicted alone."""
    return [list(predictor.predict([t], adapter=adapter)[0].probabilities.values()) for t in texts]


def assert_close(a: list[list[float]], b: list[list[float]], tolerance: float = 1e-5) -> None:
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b, strict=True):
        assert row_a == pytest.approx(row_b, abs=tolerance)


# ---- happy paths ------------------------------------------------------------------------------------------
def test_predict_answers_in_input_order_like_single_predictions(server, predictor):
    reply = server.post("/v1/predict", json={"texts": TEXTS})
    assert reply.status_code == 200
    body = reply.json()
    assert body["adapter"] == "sample" and body["revision"] == 1
    assert_close(probs(body), expected(predictor, "sample", TEXTS))
    for p in body["predictions"]:
        assert set(p) == {"label", "label_name", "confidence", "probabilities"}
        assert list(p["probabilities"]) == ["negative", "positive"]
        assert p["label_name"] == ["negative", "positive"][p["label"]]
        assert p["confidence"] == max(p["probabilities"].values())


def test_predict_uses_the_named_adapter(server):
    one = server.post("/v1/predict", json={"texts": TEXTS, "adapter": "sample"}).json()
    other = server.post("/v1/predict", json={"texts": TEXTS, "adapter": "flipped"}).json()
    assert other["adapter"] == "flipped"
    assert_close(probs(other), [row[::-1] for row in probs(one)])
    assert [p["label"] for p in other["predictions"]] == [1 - p["label"] for p in one["predictions"]]


def test_adapters_lists_names_labels_and_base_model(server, predictor):
    body = server.get("/v1/adapters").json()
    assert Path(predictor.base_model).is_absolute()
    assert body["base_model"] == "tiny"  # the folder's name, not where it lies on the server's disk
    assert body["default"] == "sample"
    assert body["adapters"] == [
        {"name": "sample", "label_names": ["negative", "positive"], "revision": 1, "default": True},
        {"name": "flipped", "label_names": ["negative", "positive"], "revision": 1, "default": False},
    ]


def test_public_model_name_keeps_hub_ids_and_hides_directories(tmp_path):
    assert public_model_name("uer/gpt2-chinese-cluecorpussmall") == "uer/gpt2-chinese-cluecorpussmall"
    assert public_model_name("gpt2") == "gpt2"
    assert public_model_name("/home/me/models/gpt2-chinese/") == "gpt2-chinese"
    assert public_model_name("../models/tiny") == "tiny"
    assert public_model_name("~/models/tiny") == "tiny"
    assert public_model_name("C:\\models\\tiny") == "tiny"
    (tmp_path / "models" / "base").mkdir(parents=True)
    os.chdir(tmp_path)  # a relative path that exists is a directory, though it reads like a hub id
    try:
        assert public_model_name("models/base") == "base"
    finally:
        os.chdir(ROOT)


def test_healthz(server):
    body = server.get("/healthz").json()
    assert (body["status"], body["adapters"], body["pending"], body["pending_texts"]) == ("ok", 2, 0, 0)
    assert (body["max_queue"], body["dropped_requests"], body["dropped_texts"]) == (2048, 0, 0)
    assert isinstance(body["model_calls"], int)


def test_openapi_docs_and_page_are_served(server):
    schema = server.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/adapters", "/v1/adapters/{name}", "/healthz"} <= set(schema["paths"])
    docs = server.get("/docs").text
    assert "swagger" in docs.lower()
    # Swagger UI's assets come from this server (fastapi-offline's copies), not from a CDN: /docs works offline.
    assert "http:" not in docs and "https:" not in docs and "cdn" not in docs.lower()
    for asset in re.findall(r'(?:src|href)="(/[^"]+)"', docs):
        reply = server.get(asset)
        assert reply.status_code == 200 and len(reply.content) > 1000, asset
    assert "/static-offline-docs/swagger-ui-bundle.js" in docs
    page = server.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="texts"' in page.text and 'id="adapter"' in page.text
    assert "http:" not in page.text and "https:" not in page.text  # no external assets: works offline


def test_onnx_backend_serves_the_same_answers(sample_adapter, predictor, tmp_path):
    from weibo_sentiment.inference import load_predictor

    onnx = load_predictor([f"sample={sample_adapter}"], backend="onnx")
    with running(create_app(onnx)) as url, httpx.Client(base_url=url, timeout=60) as client:
        body = client.post("/v1/predict", json={"texts": TEXTS}).json()
        listed = client.get("/v1/adapters").json()
    assert (body["adapter"], listed["base_model"]) == ("sample", "tiny")
    assert_close(probs(body), expected(predictor, "sample", TEXTS), tolerance=1e-4)
    with pytest.raises(UserError, match="^--adapter-root needs --backend torch: an ONNX export holds one"):
        create_app(onnx, adapter_root=tmp_path)


# ---- errors: 4xx with {"error": ...}, never a 500 or a traceback -------------------------------------------
JSON = {"content-type": "application/json"}
ERRORS = [
    ("malformed JSON", b'{"texts": ["a"', JSON, 400,
     "malformed JSON: Expecting ',' delimiter at character 14"),
    ("not an object", b'["a"]', JSON, 422, "the request body must be a JSON object"),
    ("no body", b"", JSON, 422, "the request body must be a JSON object"),
    ("not JSON content", b'{"texts": ["a"]}', {"content-type": "text/plain"}, 415,
     "send a JSON body with 'Content-Type: application/json'"),
    ("texts missing", b'{"text": ["a"]}', JSON, 422, "texts: Field required"),
    ("texts not a list", b'{"texts": "a"}', JSON, 422, "texts: Input should be a valid list"),
    ("text not a string", b'{"texts": ["a", 3]}', JSON, 422, "texts[1]: Input should be a valid string"),
    ("adapter not a string", b'{"texts": ["a"], "adapter": 1}', JSON, 422,
     "adapter: Input should be a valid string"),
    ("unknown field", b'{"texts": ["a"], "batch": 3}', JSON, 422, "batch: Extra inputs are not permitted"),
    ("empty list", b'{"texts": []}', JSON, 422, "texts is empty: send at least one text"),
    ("blank text", b'{"texts": ["a", "  "]}', JSON, 422, "texts[1] is empty"),
    ("lone surrogate", b'{"texts": ["\\ud800"]}', JSON, 422, "texts[0] is not valid Unicode text"),
    ("unknown adapter", b'{"texts": ["a"], "adapter": "nope"}', JSON, 404,
     "unknown adapter 'nope' (loaded: sample, flipped)"),
    ("too many texts", json.dumps({"texts": ["a"] * 9}).encode(), JSON, 413,
     "9 texts in one request; the limit is 8"),
    ("text too long", json.dumps({"texts": ["a", "好" * 101]}).encode(), JSON, 413,
     "texts[1] has 101 characters; the limit is 100"),
    ("body too large", json.dumps({"texts": ["a" * 5000]}).encode(), JSON, 413,
     "the request body is larger than 4096 bytes"),
]


@pytest.mark.parametrize("body, headers, status, message", [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_bad_requests_get_a_json_error(server, body, headers, status, message):
    reply = server.post("/v1/predict", content=body, headers=headers)
    assert (reply.status_code, reply.json()) == (status, {"error": message})
    assert reply.headers["content-type"] == "application/json"


def test_chunked_body_over_the_limit_is_refused(server):
    def chunks():  # no Content-Length: the server has to count
        yield b'{"texts": ["'
        for _ in range(10):
            yield b"a" * 1000
        yield b'"]}'

    reply = server.post("/v1/predict", content=chunks(), headers=JSON)
    assert (reply.status_code, reply.json()) == (413, {"error": "the request body is larger than 4096 bytes"})


def test_unknown_route_and_method_get_json_errors(server):
    assert server.get("/v2/nothing").json() == {"error": "no such endpoint: GET /v2/nothing"}
    reply = server.put("/v1/predict", json={})
    assert (reply.status_code, reply.json()) == (405, {"error": "method PUT is not allowed on /v1/predict"})


def test_adapter_management_is_off_without_a_root(server):
    for reply in (server.post("/v1/adapters", json={"name": "x", "path": "y"}),
                  server.delete("/v1/adapters/sample")):
        assert (reply.status_code, reply.json()) == (
            403, {"error": "loading adapters over HTTP is off: start the server with --adapter-root DIR"})
    assert [a["name"] for a in server.get("/v1/adapters").json()["adapters"]] == ["sample", "flipped"]


# ---- micro-batching ---------------------------------------------------------------------------------------
class Gated:
    """Wraps a predictor: each predict call is recorded and waits until the test opens the gate."""

    def __init__(self, inner: Predictor):
        self.inner, self.calls, self.open, self.entered = inner, [], threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, texts, adapter=None, batch_size=32):
        self.calls.append((adapter, list(texts)))
        self.entered.set()
        assert self.open.wait(timeout=60)
        return self.inner.predict(texts, adapter=adapter, batch_size=batch_size)


def wait_until(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.01)


def test_concurrent_requests_share_a_batch_per_adapter_while_healthz_answers(predictor):
    gated = Gated(predictor)
    app = create_app(gated)
    requests = [("sample", TEXTS[:2]), ("flipped", TEXTS[1:3]), ("sample", TEXTS[2:]), ("flipped", TEXTS[:1]),
                ("sample", TEXTS[3:])]
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(8) as pool:
        first = pool.submit(client.post, "/v1/predict", json={"texts": ["先来的"]})
        assert gated.entered.wait(timeout=60)
        # The model is busy: the others queue up, and the event loop still answers.
        replies = [pool.submit(client.post, "/v1/predict", json={"texts": t, "adapter": a})
                   for a, t in requests]
        wait_until(lambda: app.state.batcher.pending == len(requests), "the requests to queue")
        health = client.get("/healthz")
        assert (health.status_code, health.json()["pending"]) == (200, len(requests))
        gated.open.set()
        assert first.result().status_code == 200
        bodies = [r.result().json() for r in replies]
    # One call for the first request, then one per adapter for everything that queued meanwhile.
    assert len(gated.calls) == 3
    assert {a: sorted(t) for a, t in gated.calls[1:]} == {"sample": sorted(TEXTS[:2] + TEXTS[2:] + TEXTS[3:]),
                                                          "flipped": sorted(TEXTS[1:3] + TEXTS[:1])}
    for (adapter, texts), body in zip(requests, bodies, strict=True):
        assert body["adapter"] == adapter
        assert_close(probs(body), expected(predictor, adapter, texts))


class Poisoned(Gated):
    """Fails any call that includes the text 毒, as a bug would."""

    def predict(self, texts, adapter=None, batch_size=32):
        out = super().predict(texts, adapter, batch_size)
        if "毒" in texts:
            raise RuntimeError("boom")
        return out


def test_a_failing_request_does_not_fail_the_others_in_its_batch(predictor):
    poisoned = Poisoned(predictor)
    app = create_app(poisoned)
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(4) as pool:
        first = pool.submit(client.post, "/v1/predict", json={"texts": ["先来的"]})
        assert poisoned.entered.wait(timeout=60)
        bad = pool.submit(client.post, "/v1/predict", json={"texts": ["毒"]})
        good = pool.submit(client.post, "/v1/predict", json={"texts": TEXTS})
        wait_until(lambda: app.state.batcher.pending == 2, "the requests to queue")
        poisoned.open.set()
        assert first.result().status_code == 200
        assert (bad.result().status_code, bad.result().json()) == (500, {"error": "internal server error"})
        assert good.result().status_code == 200
    assert_close(probs(good.result().json()), expected(predictor, "sample", TEXTS))
    assert sorted(poisoned.calls[1][1]) == sorted(["毒", *TEXTS])  # they did share a batch, which failed
    assert len(poisoned.calls) == 4


# ---- API key ---------------------------------------------------------------------------------------------
def test_every_request_needs_the_api_key_when_one_is_set(predictor):
    with running(create_app(predictor, api_key="s3cret")) as url, httpx.Client(base_url=url) as client:
        for path in ("/", "/healthz", "/v1/adapters", "/docs", "/openapi.json",
                     "/static-offline-docs/swagger-ui-bundle.js"):
            reply = client.get(path)
            assert reply.status_code == 401, path
            assert reply.json()["error"].startswith("this server needs an API key")
        reply = client.post("/v1/predict", json={"texts": ["好"]})
        assert reply.status_code == 401
        assert reply.headers["www-authenticate"] == 'Basic realm="weibo-sentiment"'  # browsers ask for it
        for wrong in ({"authorization": "Bearer nope"}, {"x-api-key": "s3cre"}, {"authorization": "Basic !!"},
                      {"authorization": "Basic " + base64.b64encode(b"s3cret:").decode()}):
            assert client.get("/healthz", headers=wrong).status_code == 401, wrong
        basic = "Basic " + base64.b64encode(b"anyone:s3cret").decode()
        for good in ({"authorization": "Bearer s3cret"}, {"x-api-key": "s3cret"}, {"authorization": basic}):
            reply = client.post("/v1/predict", json={"texts": ["好"]}, headers=good)
            assert reply.status_code == 200, good
            assert client.get("/", headers=good).status_code == 200
            assert client.get("/static-offline-docs/swagger-ui.css", headers=good).status_code == 200


# ---- adapter management under --adapter-root -------------------------------------------------------------
def test_hot_swap_replaces_an_adapter_and_bumps_its_revision(managed):
    before = managed.post("/v1/predict", json={"texts": TEXTS}).json()
    reply = managed.post("/v1/adapters", json={"name": "sample", "path": "v2"})
    assert reply.status_code == 200
    assert reply.json() == {"name": "sample", "label_names": ["negative", "positive"], "revision": 2,
                            "default": True}
    after = managed.post("/v1/predict", json={"texts": TEXTS}).json()
    assert (after["adapter"], after["revision"]) == ("sample", 2)
    assert_close(probs(after), [row[::-1] for row in probs(before)])


def test_load_and_delete_adapters(managed):
    assert managed.post("/v1/adapters", json={"name": "extra", "path": "./v2/"}).json()["revision"] == 1
    assert [a["name"] for a in managed.get("/v1/adapters").json()["adapters"]] == ["sample", "extra"]
    assert managed.post("/v1/predict", json={"texts": ["好"], "adapter": "extra"}).status_code == 200
    assert managed.delete("/v1/adapters/extra").json() == {"removed": "extra", "default": "sample"}
    reply = managed.post("/v1/predict", json={"texts": ["好"], "adapter": "extra"})
    assert (reply.status_code, reply.json()) == (404, {"error": "unknown adapter 'extra' (loaded: sample)"})
    reply = managed.delete("/v1/adapters/extra")
    assert (reply.status_code, reply.json()) == (404, {"error": "unknown adapter 'extra' (loaded: sample)"})
    reply = managed.delete("/v1/adapters/sample")
    assert (reply.status_code, reply.json()) == (
        409, {"error": "cannot remove 'sample': it is the only adapter loaded"})
    # A name loaded again gets a new revision, so answers from the old one are never mistaken for it.
    assert managed.post("/v1/adapters", json={"name": "extra", "path": "v2"}).json()["revision"] == 2


NOT_RELATIVE = "path must be a relative path to an adapter directory inside the adapter root"
ESCAPES = [
    ({"name": "x", "path": "../outside"}, 403,
     "path '../outside' must be relative to the adapter root, without '..'"),
    ({"name": "x", "path": "v2/../../outside"}, 403,
     "path 'v2/../../outside' must be relative to the adapter root, without '..'"),
    ({"name": "x", "path": "/etc"}, 403, "path '/etc' must be relative to the adapter root, without '..'"),
    ({"name": "x", "path": "link_out"}, 403, "path 'link_out' leads outside the adapter root"),
    ({"name": "x", "path": "sneaky"}, 403, "path 'sneaky' holds a link that leads outside the adapter root"),
    ({"name": "x", "path": "..\\outside"}, 422, NOT_RELATIVE),
    ({"name": "x", "path": ""}, 422, NOT_RELATIVE),
    ({"name": "x", "path": "missing"}, 404, "no adapter directory 'missing' in the adapter root"),
    ({"name": "../x", "path": "v2"}, 422, "name must be 1 to 64 letters, digits, '-' or '_'"),
    ({"name": "a/b", "path": "v2"}, 422, "name must be 1 to 64 letters, digits, '-' or '_'"),
    ({"name": "a.b", "path": "v2"}, 422, "name must be 1 to 64 letters, digits, '-' or '_'"),
    ({"name": "x", "path": "broken"}, 422, "could not load an adapter from 'broken' (SafetensorError)"),
]


def test_paths_and_names_that_leave_the_root_are_refused(managed):
    for body, status, message in ESCAPES:
        reply = managed.post("/v1/adapters", json=body)
        assert (reply.status_code, reply.json()) == (status, {"error": message}), body
    assert [a["name"] for a in managed.get("/v1/adapters").json()["adapters"]] == ["sample"]
    assert managed.delete("/v1/adapters/..%2F..").status_code == 404


def test_adapter_for_another_base_is_refused_without_revealing_the_root(managed, root):
    run = json.loads((root / "v2" / "run.json").read_text())
    loaded = run["base_fingerprint"]
    run["base_fingerprint"] = "0" * 16
    shutil.copytree(root / "v2", root / "alien")
    (root / "alien" / "run.json").write_text(json.dumps(run))
    reply = managed.post("/v1/adapters", json={"name": "alien", "path": "alien"})
    assert reply.status_code == 422
    assert "adapters on one base must share it" in reply.json()["error"]
    assert reply.json()["error"].endswith(f"(fingerprint {'0' * 16}, loaded {loaded})")
    assert "--allow-other-base" not in reply.json()["error"]  # a command-line option; the API has none
    assert str(root) not in reply.json()["error"] and "<adapter-root>/alien" in reply.json()["error"]


# ---- Host header and binding ------------------------------------------------------------------------------
HOST_REFUSED = "the Host header names another server (serve --allowed-hosts lists the names this one answers to)"


def test_a_loopback_server_refuses_foreign_host_headers(predictor):
    app = create_app(predictor, allowed_hosts=LOOPBACK_HOSTS)
    with running(app) as url, httpx.Client(base_url=url) as client:
        reply = client.get("/healthz", headers={"host": "attacker.example"})
        assert (reply.status_code, reply.json()) == (400, {"error": HOST_REFUSED})
        port = url.rsplit(":", 1)[1]
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            assert client.get("/healthz", headers={"host": host}).status_code == 200, host


def test_exposure_warning_for_every_address_but_loopback():
    for loopback in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert exposure_warning(loopback, None) is None, loopback
    assert exposure_warning("0.0.0.0", None) == ("warning: listening on all interfaces (0.0.0.0): anyone who can "
                                                 "reach this machine can use the API; consider --api-key")
    assert exposure_warning("::", "key").endswith("can use the API")
    assert exposure_warning("192.168.1.20", None) == (
        "warning: listening on 192.168.1.20, not a loopback address: anyone who can reach that address can use "
        "the API; consider --api-key")
    assert exposure_warning("fd00::5", "key") == ("warning: listening on fd00::5, not a loopback address: anyone "
                                                  "who can reach that address can use the API")
    assert exposure_warning("myhost.lan", None).startswith("warning: listening on myhost.lan, not a loopback")


def test_serve_refuses_a_busy_port(cli, sample_adapter):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("serve", "--adapter", sample_adapter, "--port", port)
    assert result.code == 2
    assert result.err.strip().splitlines()[-1].startswith(f"error: cannot listen on 127.0.0.1:{port}: ")


def test_serve_refuses_a_missing_adapter_root(cli, sample_adapter, tmp_path):
    result = cli("serve", "--adapter", sample_adapter, "--port", "0", "--adapter-root", tmp_path / "nope")
    assert result.code == 2
    last = result.err.strip().splitlines()[-1]
    assert last == f"error: --adapter-root {tmp_path / 'nope'}: no such directory"


def test_serve_command_end_to_end_with_key_from_environment(sample_adapter):
    """The real console command: port 0, the URL it prints, the key from the environment, Ctrl+C."""
    env = {**os.environ, "WEIBO_SENTIMENT_API_KEY": "env-key"}
    command = [sys.executable, "-m", "weibo_sentiment", "serve", "--adapter", f"s={sample_adapter}",
               "--port", "0"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:  # the URL is printed before the server starts accepting
            lines.append(line)
            if "Serving" in line:
                break
        url = re.search(r"on (http://127\.0\.0\.1:\d+)", "".join(lines)).group(1)
        wait_for_startup(url)
        assert httpx.get(f"{url}/healthz").status_code == 401
        reply = httpx.post(f"{url}/v1/predict", json={"texts": ["好"]}, headers={"x-api-key": "env-key"})
        assert reply.status_code == 200 and reply.json()["adapter"] == "s"
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl+C
        code = proc.wait(timeout=30)
    assert code == 0
    assert proc.stderr.read().strip().endswith("Server stopped.")


def wait_for_startup(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{url}/healthz")
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_server_on_all_interfaces_refuses_foreign_host_headers(sample_adapter):
    """DNS rebinding (issue 17): a page on evil.example whose name resolves to this machine is same-origin to the
    browser, so Origin checks pass; only the Host header tells. Before, a non-loopback bind accepted any Host."""
    command = [sys.executable, "-m", "weibo_sentiment", "serve", "--adapter", f"s={sample_adapter}",
               "--host", "0.0.0.0", "--port", "0", "--allowed-hosts", "proxy.example", "Other.Example."]
    proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "Serving" in line:
                break
        port = re.search(r"on http://[^ ]*:(\d+)", "".join(lines)).group(1)
        assert "Answering to Host 127.0.0.1, localhost, ::1, 0.0.0.0" in "".join(lines)
        url = f"http://127.0.0.1:{port}"  # connect over loopback; the Host header is what is under test
        wait_for_startup(url)
        for foreign in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "[fe80::1]"):
            reply = httpx.get(f"{url}/healthz", headers={"host": foreign})
            assert (reply.status_code, reply.json()) == (400, {"error": HOST_REFUSED}), foreign
            reply = httpx.post(f"{url}/v1/predict", json={"texts": ["好"]}, headers={"host": foreign})
            assert reply.status_code == 400, foreign
        for own in (f"127.0.0.1:{port}", "localhost", f"[::1]:{port}", "proxy.example", "other.example:8080",
                    "PROXY.EXAMPLE.", socket.gethostname()):
            assert httpx.get(f"{url}/healthz", headers={"host": own}).status_code == 200, own
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_allowed_host_names_rule():
    assert allowed_host_names("127.0.0.1") == ["127.0.0.1", "localhost", "::1"]
    assert allowed_host_names("192.168.1.20", ["api.example."]) == ["127.0.0.1", "localhost", "::1", "192.168.1.20",
                                                                    "api.example"]
    assert allowed_host_names("[::]", ["*"]) is None  # explicit: any Host
    wildcard = allowed_host_names("0.0.0.0")
    assert socket.gethostname().lower() in wildcard and "evil.example" not in wildcard
