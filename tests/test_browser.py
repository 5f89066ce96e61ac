"""The web page in real headless Chromium, driven over the DevTools protocol: type, click, read results."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from weibo_sentiment.inference import Predictor
from weibo_sentiment.serve import create_app

from .serving_helpers import running
from .test_serve import flipped_copy

pytestmark = pytest.mark.browser

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=900,800", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0"]
POSTS = ["这部电影太好看了，我非常喜欢！[哈哈]", "服务态度差，价格又贵，完全不推荐[怒]"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.fail("Chromium is missing: this test needs Debian's chromium (apt-get install -y chromium; "
                ".ci/run installs it)", pytrace=False)


class Page:
    """One Chromium tab over the Chrome DevTools Protocol."""

    def __init__(self, profile: Path):
        import websocket

        self.proc = subprocess.Popen([chromium(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        self._wait(lambda: port_file.is_file() and port_file.read_text().strip(), "Chromium to start", 60)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list").json()
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # events arrive interleaved with answers
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]

    def eval(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 60):
        return self._wait(lambda: self.eval(expression), what, timeout)

    @staticmethod
    def _wait(condition, what: str, timeout: float):
        deadline = time.monotonic() + timeout
        while not (value := condition()):
            if time.monotonic() > deadline:
                pytest.fail(f"gave up waiting for {what}")
            time.sleep(0.05)
        return value

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        box = self.eval(f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
                        f" return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def type_into(self, selector: str, text: str) -> None:
        self.eval(f"const box = document.querySelector({selector!r}); box.value = ''; box.focus()")
        self.send("Input.insertText", text=text)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tab = Page(tmp_path_factory.mktemp("chromium-profile"))
    yield tab
    tab.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory, sample_adapter):
    flipped = flipped_copy(sample_adapter, tmp_path_factory.mktemp("browser") / "flipped")
    predictor = Predictor.from_adapters({"sample": sample_adapter, "flipped": flipped}, device="cpu")
    with running(create_app(predictor, max_chars=100)) as url:
        yield url


def rendered(page: Page) -> list[dict]:
    return page.eval("""[...document.querySelectorAll('#results .result')].map(r => ({
        text: r.querySelector('.text').textContent, label: r.querySelector('.badge').textContent,
        confidence: r.querySelector('.conf').textContent, width: r.querySelector('.fill').style.width}))""")


def css_percent(confidence: float) -> str:
    """The page sets `width` to the percentage with one decimal; the browser reads "54.0%" back as "54%"."""
    return f"{float(f'{100 * confidence:.1f}'):g}%"


def expected_rows(url: str, adapter: str) -> list[dict]:
    names = {"positive": "积极 Positive", "negative": "消极 Negative"}
    reply = httpx.post(f"{url}/v1/predict", json={"texts": POSTS, "adapter": adapter}).json()
    return [{"text": text, "label": names[p["label_name"]], "confidence": f"{100 * p['confidence']:.1f}%",
             "width": css_percent(p["confidence"])}
            for text, p in zip(POSTS, reply["predictions"], strict=True)]


def test_type_posts_submit_and_read_results(page, site, tmp_path):
    page.send("Page.navigate", url=site + "/")
    page.wait_for("document.querySelectorAll('#adapter option').length === 2", "the adapter list")
    options = page.eval("[...document.querySelectorAll('#adapter option')].map(o => o.value)")
    assert options == ["sample", "flipped"]
    assert page.eval("document.getElementById('adapter').value") == "sample"

    page.type_into("#texts", "\n".join(POSTS) + "\n\n")  # blank lines are skipped
    page.click("#submit")
    page.wait_for("document.querySelectorAll('#results .result').length === 2", "the results")
    first = rendered(page)
    assert first == expected_rows(site, "sample")

    shot = page.send("Page.captureScreenshot", format="png")["data"]
    (tmp_path / "page.png").write_bytes(base64.b64decode(shot))
    assert (tmp_path / "page.png").read_bytes().startswith(b"\x89PNG")

    # Another adapter from the selector: its head is flipped, so every label flips.
    page.eval("const s = document.getElementById('adapter'); s.value = 'flipped';"
              " s.dispatchEvent(new Event('change'))")
    page.eval("document.getElementById('results').replaceChildren()")
    page.click("#submit")
    page.wait_for("document.querySelectorAll('#results .result').length === 2", "the flipped results")
    second = rendered(page)
    assert second == expected_rows(site, "flipped")
    assert [r["label"] for r in second] != [r["label"] for r in first]


def test_server_errors_are_shown_on_the_page(page, site):
    page.send("Page.navigate", url=site + "/")
    page.wait_for("document.querySelectorAll('#adapter option').length === 2", "the adapter list")
    page.type_into("#texts", "好" * 101)
    page.click("#submit")
    message = page.wait_for("document.getElementById('error')?.textContent", "the error message")
    assert message == "出错了 / Error: texts[0] has 101 characters; the limit is 100"
    assert page.eval("document.querySelectorAll('#results .result').length") == 0


def test_page_names_the_base_model_by_its_folder_only(page, site):
    page.send("Page.navigate", url=site + "/")
    base = page.wait_for("document.getElementById('base')?.textContent", "the base model line")
    assert base == "基座模型 / Base model: tiny"  # not the directory it lies in on the server


def test_api_docs_render_offline(page, site):
    """Swagger UI's script and style come from the server itself (fastapi-offline's copies), so /docs renders
    its operations with no network beyond the server; from a CDN it stayed blank offline."""
    page.send("Page.navigate", url=site + "/docs")
    paths = page.wait_for("(() => { const p = [...document.querySelectorAll('.opblock-summary-path')]"
                          ".map(e => e.textContent.replace(/\\u200b/g, '')); return p.length >= 6 && p; })()",
                          "Swagger UI to render the operations")
    assert {"/v1/predict", "/v1/adapters", "/v1/adapters/{name}", "/v1/default", "/healthz"} <= set(paths)
    assert page.eval("document.querySelector('.swagger-ui .info .title').textContent").startswith("weibo-sentiment")
    resources = page.eval("performance.getEntriesByType('resource').map(r => r.name)")
    assert resources and all(r.startswith(site) for r in resources), resources


def test_explanations_highlight_spans_readable_without_colour(page, site, tmp_path):
    page.send("Page.navigate", url=site + "/")
    page.wait_for("document.querySelectorAll('#adapter option').length === 2", "the adapter list")
    posts = [*POSTS, "iPhone15 真的 unbelievable 😀 太棒了"]
    page.type_into("#texts", "\n".join(posts))
    page.click("#explain")
    page.click("#submit")
    page.wait_for("document.querySelectorAll('#results .result .spans').length === 3", "the explanations", 120)
    shown = page.eval("""[...document.querySelectorAll('#results .result')].map(r => ({
        text: r.querySelector('.text').textContent,
        marks: [...r.querySelectorAll('.text mark')].map(m => [m.textContent, m.dataset.rank, m.className, m.title]),
        listed: [...r.querySelectorAll('.spans li')].map(li => li.textContent)}))""")
    reply = httpx.post(f"{site}/v1/predict", json={"texts": posts, "adapter": "sample", "explain": True}).json()
    for post, row, p in zip(posts, shown, reply["predictions"], strict=True):
        assert row["text"] == post  # the marks hold the post's own characters; the ranks come from CSS
        spans = p["explanation"]
        assert len(row["marks"]) == len(row["listed"]) == len(spans) == 5
        by_rank = sorted(row["marks"], key=lambda m: int(m[1]))
        assert [m[0] for m in by_rank] == [s for s, _ in spans]
        for (span, weight), (_, rank, kind, title), listed in zip(spans, by_rank, row["listed"]):
            # The sign without colour: the underline's style (class), ▲/▼ and +/− in the list, the title.
            assert kind == ("for" if weight >= 0 else "against")
            signed = ("+" if weight >= 0 else "−") + f"{abs(weight):.3f}"
            said = "▲ " + signed + " 支持 / supports" if weight >= 0 else "▼ " + signed + " 反对 / against"
            assert listed == f"{span} {said}"  # (the 「」 around the span come from CSS)
            assert title.startswith(f"#{rank} {signed}")
    page.send("Emulation.setDeviceMetricsOverride", width=900, height=1250, deviceScaleFactor=1, mobile=False)
    shot = page.send("Page.captureScreenshot", format="png")["data"]
    page.send("Emulation.clearDeviceMetricsOverride")
    (tmp_path / "explained.png").write_bytes(base64.b64decode(shot))
    assert (tmp_path / "explained.png").read_bytes().startswith(b"\x89PNG")


def test_a_label_is_corrected_from_the_page(page, sample_adapter, tmp_path):
    """"Correct this label" posts to /v1/feedback as the page's own origin; the store gets the correction."""
    from weibo_sentiment.feedback import FeedbackStore

    store = tmp_path / "feedback.jsonl"
    predictor = Predictor.from_adapters({"sample": sample_adapter}, device="cpu")
    for feedback in (store, None):
        with running(create_app(predictor, feedback=feedback)) as url:
            page.send("Page.navigate", url=url + "/")
            page.wait_for("document.querySelectorAll('#adapter option').length === 1", "the adapter list")
            page.type_into("#texts", POSTS[0])
            page.click("#submit")
            page.wait_for("document.querySelectorAll('#results .result').length === 1", "the result")
            assert page.eval("document.querySelector('.fix select').hidden")
            page.click(".fix .toggle")
            predicted = page.eval("document.querySelector('.result').dataset.label")
            chosen = page.eval("document.querySelector('.fix select').value")
            assert chosen != predicted  # the other label is offered first
            page.click(".fix button:nth-of-type(2)")
            status = page.wait_for("document.querySelector('.fix .status.ok, .fix .status.bad')?.textContent",
                                   "the correction's answer")
            if feedback is not None:
                names = {"positive": "积极 Positive", "negative": "消极 Negative"}
                assert status == "✓ 已记录 / Saved: " + names[chosen]
                stored = [(c.text, c.predicted_label, c.corrected_label) for c in FeedbackStore(store).read()]
                assert stored == [(POSTS[0], predicted, chosen)]
            else:
                assert status == ("未记录 / Not saved: feedback is off: start the server with --feedback FILE or "
                                  "--adapter-root DIR")
    assert len(FeedbackStore(store).read()) == 1  # the refused one went nowhere
