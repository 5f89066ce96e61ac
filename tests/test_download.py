"""The first real run: `python train.py` downloads the base model from a hub-shaped server, once.

A local HTTP server answers the Hugging Face Hub's file protocol for uer/gpt2-chinese-cluecorpussmall with the
upstream repository's layout (config.json without pad/bos/eos ids, vocab.txt, pytorch_model.bin; no safetensors,
no tokenizer files beyond vocab.txt), at a tiny shape with the real vocabulary.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLE, shared
from weibo_sentiment.modeling import DEFAULT_BASE_MODEL, _hub_unreachable
from weibo_sentiment.output import SOURCE_FILE

pytestmark = pytest.mark.hub

COMMIT = "c2a3c1b4d5e6f708192a3b4c5d6e7f8091a2b3c4"  # any 40 hex digits: the hub names revisions by commit


def _upstream_files(vocab: Path) -> dict[str, bytes]:
    """The upstream repository's files at a tiny shape: its config keys, the real vocabulary, a .bin state dict."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = {
        "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
        "embd_pdrop": 0.1, "gradient_checkpointing": False, "initializer_range": 0.02, "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2", "n_ctx": 128, "n_embd": 64, "n_head": 2, "n_inner": None, "n_layer": 2,
        "n_positions": 128, "output_past": True, "resid_pdrop": 0.1,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 320}},
        "tokenizer_class": "BertTokenizer", "vocab_size": 21128,
    }
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**config, bos_token_id=None, eos_token_id=None))  # as upstream: none
    weights = io.BytesIO()
    torch.save(model.state_dict(), weights)
    return {
        "config.json": json.dumps(config, indent=2).encode(),
        "vocab.txt": vocab.read_bytes(),
        "pytorch_model.bin": weights.getvalue(),
    }


class FakeHub:
    """A hub endpoint on 127.0.0.1 serving one repository at one commit; `requests` logs what was asked."""

    def __init__(self, repo: str, files: dict[str, bytes]):
        self.repo, self.files, self.requests = repo, files, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep the test output clean
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        self.requests.append(f"{handler.command} {handler.path}")
        path = handler.path.split("?")[0]
        if match := re.fullmatch(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path):
            return self._resolve(handler, body, **match.groupdict())
        if match := re.fullmatch(r"/api/models/(?P<repo>[^/]+/[^/]+)(/revision/(?P<rev>[^/]+))?", path):
            return self._api(handler, body, match["repo"], match["rev"] or "main", lambda: self._model_info())
        if match := re.fullmatch(r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(/(?P<dir>.*))?", path):
            return self._api(handler, body, match["repo"], match["rev"], lambda: self._tree(match["dir"] or ""))
        # Anything else (e.g. /api/agent-harnesses, an optional registry): not served here.
        self._send(handler, 404, {}, b"Not Found", body)

    def _check(self, handler, body: bool, repo: str, rev: str) -> bool:
        if repo != self.repo:
            self._send(handler, 404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
                       b"", body)
        elif rev not in ("main", COMMIT):
            self._send(handler, 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"},
                       b"", body)
        else:
            return True
        return False

    def _resolve(self, handler, body: bool, repo: str, rev: str, file: str) -> None:
        if not self._check(handler, body, repo, rev):
            return
        data = self.files.get(file)
        if data is None:
            return self._send(handler, 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found",
                                             "X-Repo-Commit": COMMIT}, b"", body)
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        self._send(handler, 200, {"ETag": etag, "X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes",
                                  "Content-Type": "application/octet-stream"}, data, body)

    def _api(self, handler, body: bool, repo: str, rev: str, answer) -> None:
        if not self._check(handler, body, repo, rev):
            return
        result = answer()
        if result is None:
            return self._send(handler, 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"},
                              b"", body)
        self._send(handler, 200, {"Content-Type": "application/json"}, json.dumps(result).encode(), body)

    def _model_info(self) -> dict:
        return {"_id": "0" * 24, "id": self.repo, "modelId": self.repo, "author": self.repo.split("/")[0],
                "sha": COMMIT, "private": False, "gated": False, "disabled": False, "library_name": "transformers",
                "pipeline_tag": "text-generation", "tags": ["transformers", "pytorch", "gpt2", "zh"],
                "siblings": [{"rfilename": name} for name in sorted(self.files)]}

    def _tree(self, folder: str) -> list | None:
        if folder:
            return None  # the repository has no folders
        return [{"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": name}
                for name, data in sorted(self.files.items())]

    @staticmethod
    def _send(handler, status: int, headers: dict[str, str], data: bytes, body: bool) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)


@pytest.fixture
def hub(real_vocab):
    server = FakeHub(DEFAULT_BASE_MODEL, _upstream_files(real_vocab))
    yield server
    server.stop()


@pytest.fixture
def work(tmp_path) -> Path:
    """A working directory laid out as the README's real run expects: dataset/weibo_senti_100k.csv."""
    (tmp_path / "work" / "dataset").mkdir(parents=True)
    shutil.copy(SAMPLE, tmp_path / "work" / "dataset" / "weibo_senti_100k.csv")
    return tmp_path / "work"


def _train_py(cwd: Path, endpoint: str, *args: str) -> subprocess.CompletedProcess:
    """`python train.py ARGS` run from `cwd`, as the README runs it, against the hub at `endpoint`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    # huggingface_hub reads HF_ENDPOINT when imported: hence a fresh process. HF_HOME: a private hub cache.
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(cwd.parent / "hf_home"), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "train.py"), "--epochs", "1", "--max-steps", "2", "--batch-size", "8", *args]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    print(f"$ python train.py -> {result.returncode}\n{result.stderr}")  # shown when a test fails
    assert "Traceback" not in result.stderr
    return result


def test_train_py_downloads_once_then_runs_offline(work, hub):
    model_dir = work / "models" / "gpt2-chinese"
    adapter = work / "best_weibo_sentiment_lora"

    # 1. The first run downloads the model once into models/gpt2-chinese, then trains.
    first = _train_py(work, hub.url)
    print("hub requests:\n" + "\n".join(hub.requests))
    assert first.returncode == 0
    assert (model_dir / "model.safetensors").is_file()
    assert not (model_dir / "pytorch_model.bin").exists()
    assert json.loads((model_dir / SOURCE_FILE).read_text()) == {"base_model": DEFAULT_BASE_MODEL}
    # The upstream config has no special ids (transformers would assume 50256): set from the tokenizer.
    for name in ("config.json", "generation_config.json"):
        config = json.loads((model_dir / name).read_text())
        assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (0, 101, 102), name
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["vocab_size"]) == (2, 64, 21128)
    assert (model_dir / "vocab.txt").read_bytes() == hub.files["vocab.txt"]  # as init-model keeps it too
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["pad_token"] == "[PAD]"
    assert tokenizer_config["model_max_length"] == 128  # no tokenizer_config.json upstream: the model's n_positions
    assert (adapter / "adapter_model.safetensors").is_file()
    assert len([r for r in hub.requests if r.startswith("GET ") and r.endswith("/pytorch_model.bin")]) == 1
    # transformers' safetensors conversion thread (model info, commits, discussions, then a request to a
    # conversion service off the hub) never starts: we save safetensors ourselves.
    assert f"GET /api/models/{DEFAULT_BASE_MODEL}" not in hub.requests
    assert not [r for r in hub.requests if "/commits/" in r or "/discussions" in r]

    # 2. With the hub gone, the next run works from models/gpt2-chinese and dials nothing: a bare socket on the
    #    hub's port (it answers no HTTP) would see any attempt.
    hub.stop()
    shutil.rmtree(adapter)
    with socket.socket() as sentinel:
        sentinel.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sentinel.bind(hub.server.server_address)
        sentinel.listen()
        second = _train_py(work, hub.url)
        sentinel.setblocking(False)
        with pytest.raises(BlockingIOError):
            sentinel.accept()
    assert second.returncode == 0
    assert "download" not in second.stderr.lower()
    assert (adapter / "adapter_model.safetensors").is_file()

    # 3. With the hub gone and no local copy: exit 2 and one clear line, at once (no minutes of retries).
    shutil.rmtree(work / "models")
    start = time.monotonic()
    third = _train_py(work, hub.url)
    assert third.returncode == 2
    assert third.stderr.strip().splitlines() == [
        f"error: base model '{DEFAULT_BASE_MODEL}' is not in models/gpt2-chinese and cannot be downloaded "
        f"(cannot connect to {hub.url}: Connection refused); pass --base-model DIR with a local model directory "
        "(e.g. one written by `weibo-sentiment init-model`)"
    ]
    assert time.monotonic() - start < 60
    assert not model_dir.exists()


def test_upstream_tokenizer_files_are_honoured(work, hub):
    """Should the hub also serve the tokenizer_config.json and special_tokens_map.json of ../shared's copy."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        hub.files[name] = shared("models", "gpt2-chinese-cluecorpussmall", name).read_bytes()
    assert _train_py(work, hub.url, "--max-steps", "1").returncode == 0
    tokenizer_config = json.loads((work / "models" / "gpt2-chinese" / "tokenizer_config.json").read_text())
    assert tokenizer_config["do_lower_case"] is False
    assert tokenizer_config["model_max_length"] == 128  # 1024 upstream, but this model has 128 positions
    assert tokenizer_config["pad_token"] == "[PAD]"


@pytest.fixture
def listener():
    """A TCP port on 127.0.0.1 that accepts connections, and a closed one beside it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    yield sock.getsockname()[1], closed_port
    sock.close()


def _dialled(monkeypatch, endpoint: str) -> tuple[str, int]:
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "ENDPOINT", endpoint)
    dialled = []

    def fake_connect(address, timeout=None):
        dialled.append(address)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", fake_connect)
    assert _hub_unreachable() is not None
    return dialled[0]


@pytest.mark.parametrize(("endpoint", "address"), [
    ("https://huggingface.co", ("huggingface.co", 443)),
    ("http://mirror.example", ("mirror.example", 80)),
    ("https://mirror.example:8443", ("mirror.example", 8443)),
    ("http://127.0.0.1:8080/", ("127.0.0.1", 8080)),
    ("http://[::1]:9000", ("::1", 9000)),
])
def test_hub_check_dials_the_endpoints_scheme_and_port(monkeypatch, endpoint, address):
    assert _dialled(monkeypatch, endpoint) == address


def test_hub_check_against_a_live_and_a_closed_port(monkeypatch, listener):
    import huggingface_hub.constants as c

    live, closed = listener
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "ENDPOINT", f"http://127.0.0.1:{live}")
    assert _hub_unreachable() is None
    monkeypatch.setattr(c, "ENDPOINT", f"http://127.0.0.1:{closed}")
    reason = _hub_unreachable()
    assert reason is not None and reason.startswith(f"cannot connect to http://127.0.0.1:{closed}")


@pytest.mark.parametrize("endpoint", ["huggingface.co", "ftp://mirror.example", "http://mirror.example:99999"])
def test_hub_check_names_an_endpoint_it_cannot_dial(monkeypatch, endpoint):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "ENDPOINT", endpoint)
    assert _hub_unreachable() == f"HF_ENDPOINT {endpoint!r} is not an http:// or https:// URL"
