"""Load test of `weibo-sentiment serve`: many concurrent requests, two adapters, one hot-swapped midway.

Everything stays on this machine: the server listens on 127.0.0.1 only, the run is bounded in requests
and in time, and the server is stopped at the end. Steps:

1. build a tiny base (vocabulary from the shipped sample) and three adapters: `a`, `b` and `b`'s
   replacement `b_v2`, each trained briefly with its own seed, all under one adapter root;
2. start `weibo-sentiment serve --adapter alpha=... --adapter beta=... --adapter-root ROOT --port 0`;
3. take the single-request answer of every text from the server for `a`, `b` and `b_v2` (loaded for that
   under a probe name, then removed);
4. send N requests (1-8 random texts, adapter a, b or the default) at C concurrency; when half are done,
   hot-swap `b` to `b_v2` with POST /v1/adapters;
5. check every response against the single-request answer of the adapter revision it names, check that
   no request that started after the swap finished got the old `b` (nor one finished before it the new),
   and report latency, throughput, errors and wrong answers.

Writes benchmarks/results/loadtest.json; exits 1 on any error or wrong answer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "weibo_sample.csv"
HELDOUT = ROOT / "examples" / "weibo_sample_heldout.csv"
HOST = "127.0.0.1"  # loopback only, never configurable
TOLERANCE = 1e-4  # batched vs single: the same maths up to float rounding and padding


def build(work: Path, preset: str, vocab: str | None) -> Path:
    """A base and three adapters under `work/root`; returns the root."""
    from weibo_sentiment.modeling import init_model
    from weibo_sentiment.training import TrainConfig, train

    base = work / "base"
    if vocab:
        init_model(base, preset, vocab_file=vocab, seed=0)
    else:
        init_model(base, preset, vocab_from_data=SAMPLE, seed=0)
    root = work / "root"
    steps = 30 if preset == "tiny" else 4
    for name, seed in (("a", 1), ("b_v1", 2), ("b_v2", 3)):
        print(f"training adapter {name} ({steps} steps)", flush=True)
        train(TrainConfig(data=str(SAMPLE), base_model=str(base), output=str(root / name), max_steps=steps,
                          lr=2e-3, seed=seed, logging_steps=10_000, validation_split=0.1))
    return root


def texts_pool(size: int) -> list[str]:
    import pandas as pd

    texts = pd.concat([pd.read_csv(HELDOUT), pd.read_csv(SAMPLE)])["review"].astype(str).tolist()
    unique = list(dict.fromkeys(t for t in texts if t.strip()))
    return unique[:size]


class Server:
    """`weibo-sentiment serve` in a subprocess on a free loopback port."""

    def __init__(self, root: Path, log: Path, extra: list[str]):
        self.log = log
        command = [sys.executable, "-m", "weibo_sentiment", "serve", "--host", HOST, "--port", "0",
                   "--adapter", f"alpha={root / 'a'}", "--adapter", f"beta={root / 'b_v1'}",
                   "--adapter-root", str(root), *extra]
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"),
                                     env={**os.environ, "WEIBO_SENTIMENT_API_KEY": ""})
        self.url = self._wait_for_url(timeout=300)

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited:\n{self.log.read_text()}")
            match = re.search(r"on (http://127\.0\.0\.1:\d+)", self.log.read_text())
            if match:
                url = match.group(1)
                try:
                    httpx.get(f"{url}/healthz", timeout=5).raise_for_status()
                    return url
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        raise SystemExit("the server did not start in time")

    def cpu_seconds(self) -> float | None:
        """CPU time the server process has used so far (Linux), to set against the wall time."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def references(client: httpx.Client, texts: list[str], adapter: str) -> dict[str, list[float]]:
    """Each text's probabilities when sent alone."""
    out = {}
    for text in texts:
        reply = client.post("/v1/predict", json={"texts": [text], "adapter": adapter})
        reply.raise_for_status()
        out[text] = list(reply.json()["predictions"][0]["probabilities"].values())
    return out


async def load(url: str, texts: list[str], n: int, concurrency: int, seed: int) -> dict:
    rng = random.Random(seed)
    plan = [(rng.sample(texts, rng.randint(1, 8)), rng.choice(["alpha", "beta", "beta", None])) for _ in range(n)]
    results: list[dict | None] = [None] * n
    swap: dict = {}
    health: list[float] = []
    done = 0
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def do_swap() -> None:
            swap["start"] = time.perf_counter()
            reply = await client.post("/v1/adapters", json={"name": "beta", "path": "b_v2"})
            swap["end"] = time.perf_counter()
            swap["status"], swap["reply"] = reply.status_code, reply.json()

        async def worker() -> None:
            nonlocal done, next_index
            swap_task = None
            while next_index < n:
                i = next_index
                next_index += 1
                batch, adapter = plan[i]
                body = {"texts": batch} | ({"adapter": adapter} if adapter else {})
                start = time.perf_counter()
                try:
                    reply = await client.post("/v1/predict", json=body)
                    status, payload = reply.status_code, reply.json()
                except (httpx.HTTPError, ValueError) as e:
                    status, payload = None, {"error": repr(e)}
                results[i] = {"start": start, "end": time.perf_counter(), "status": status, "reply": payload,
                              "texts": batch, "asked": adapter or "alpha"}
                done += 1
                if done == n // 2 and not swap:
                    swap["pending"] = True
                    swap_task = asyncio.create_task(do_swap())
            if swap_task is not None:
                await swap_task

        async def probe() -> None:  # /healthz must answer promptly while the model is busy
            while done < n:
                start = time.perf_counter()
                (await client.get("/healthz")).raise_for_status()
                health.append(time.perf_counter() - start)
                await asyncio.sleep(0.05)

        started = time.perf_counter()
        prober = asyncio.create_task(probe())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        await prober
    return {"results": results, "swap": swap, "elapsed": elapsed, "health": health}


def check(run: dict, refs: dict[tuple[str, int], dict[str, list[float]]]) -> dict:
    swap = run["swap"]
    errors, wrong, max_diff = [], [], 0.0
    in_window = {1: 0, 2: 0}
    for i, r in enumerate(run["results"]):
        if r["status"] != 200:
            errors.append({"request": i, "status": r["status"], "reply": r["reply"]})
            continue
        reply = r["reply"]
        name, revision = reply["adapter"], reply["revision"]
        problem = None
        if name != r["asked"]:
            problem = f"asked for {r['asked']}, answered by {name}"
        elif (name, revision) not in refs:
            problem = f"unexpected revision {revision} of {name}"
        elif name == "beta":
            before, after = r["end"] < swap["start"], r["start"] > swap["end"]
            if (before and revision != 1) or (after and revision != 2):
                problem = f"revision {revision} of beta outside the swap window"
            elif not before and not after:
                in_window[revision] += 1
        if problem is None:
            expected = refs[(name, revision)]
            for text, p in zip(r["texts"], reply["predictions"], strict=True):
                got = list(p["probabilities"].values())
                diff = float(np.max(np.abs(np.array(got) - np.array(expected[text]))))
                max_diff = max(max_diff, diff)
                if diff > TOLERANCE or p["label"] != int(np.argmax(expected[text])):
                    problem = f"{text!r}: {got} but alone {expected[text]}"
                    break
        if problem:
            wrong.append({"request": i, "problem": problem})
    latencies = np.array([r["end"] - r["start"] for r in run["results"]]) * 1000
    health = np.array(run["health"] or [float("nan")]) * 1000
    if swap.get("status") != 200:
        errors.append({"request": "swap", "status": swap.get("status"), "reply": swap.get("reply")})
    n = len(run["results"])
    return {
        "requests": n,
        "texts": sum(len(r["texts"]) for r in run["results"]),
        "errors": len(errors),
        "wrong_answers": len(wrong),
        "latency_ms": {"p50": round(float(np.percentile(latencies, 50)), 1),
                       "p90": round(float(np.percentile(latencies, 90)), 1),
                       "p99": round(float(np.percentile(latencies, 99)), 1),
                       "max": round(float(latencies.max()), 1)},
        "requests_per_s": round(n / run["elapsed"], 1),
        "texts_per_s": round(sum(len(r["texts"]) for r in run["results"]) / run["elapsed"], 1),
        "elapsed_s": round(run["elapsed"], 2),
        "max_probability_diff_vs_single": max_diff,
        "swap": {"status": swap.get("status"), "revision": swap.get("reply", {}).get("revision"),
                 "took_ms": round((swap["end"] - swap["start"]) * 1000, 1) if "end" in swap else None,
                 "requests_for_b_in_flight_during_swap": in_window},
        "healthz_ms": {"checks": len(run["health"]), "p50": round(float(np.percentile(health, 50)), 1),
                       "max": round(float(health.max()), 1)},
        "error_examples": errors[:5],
        "wrong_examples": wrong[:5],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--texts", type=int, default=300, help="distinct texts to draw requests from")
    parser.add_argument("--preset", choices=["tiny", "uer"], default="tiny", help="base model shape")
    parser.add_argument("--vocab", help="vocab.txt for the base (default: built from the shipped sample)")
    parser.add_argument("--time-limit", type=float, default=600, help="seconds for the load phase at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "loadtest.json"))
    parser.add_argument("--keep", action="store_true", help="keep the work folder (models, server log)")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256:
        parser.error("--requests must be 1..100000 and --concurrency 1..256")

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    load_at_start = round(os.getloadavg()[0], 2)  # other work on the machine shows in every figure
    work = Path(tempfile.mkdtemp(prefix="weibo-loadtest-"))
    server = None
    try:
        root = build(work, args.preset, args.vocab)
        texts = texts_pool(args.texts)
        server = Server(root, work / "server.log", [])
        print(f"server at {server.url}; taking single-request answers of {len(texts)} texts", flush=True)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            refs = {("alpha", 1): references(client, texts, "alpha"), ("beta", 1): references(client, texts, "beta")}
            client.post("/v1/adapters", json={"name": "probe", "path": "b_v2"}).raise_for_status()
            refs[("beta", 2)] = references(client, texts, "probe")
            client.delete("/v1/adapters/probe").raise_for_status()
            calls_before = client.get("/healthz").json()["model_calls"]
        differ = sum(np.argmax(refs[("beta", 1)][t]) != np.argmax(refs[("beta", 2)][t]) for t in texts)
        print(f"{args.requests} requests at concurrency {args.concurrency}; swapping beta midway", flush=True)
        server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
        run = asyncio.run(asyncio.wait_for(
            load(server.url, texts, args.requests, args.concurrency, args.seed), args.time_limit))
        client_cpu = time.process_time() - client_cpu
        server_cpu = server.cpu_seconds() - server_cpu if server_cpu is not None else None
        with httpx.Client(base_url=server.url, timeout=60) as client:
            calls = client.get("/healthz").json()["model_calls"] - calls_before
        report = check(run, refs)
        report["model_calls"] = calls
        # On a shared machine the wall-clock figures depend on everyone else; CPU per request does not.
        report["cpu_s"] = {"server": round(server_cpu, 1) if server_cpu is not None else None,
                           "load_generator": round(client_cpu, 1)}
        report["server_cpu_ms_per_request"] = (round(1000 * server_cpu / args.requests, 2)
                                               if server_cpu is not None else None)
        report["requests_per_model_call"] = round(args.requests / max(calls, 1), 2)
        report["setup"] = {
            "preset": args.preset, "concurrency": args.concurrency, "distinct_texts": len(texts),
            "texts_per_request": "1-8", "adapters": ["alpha", "beta (hot-swapped to b_v2 midway)"],
            "b_labels_changed_by_swap": int(differ), "tolerance": TOLERANCE,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(), "load_average_1min_at_start": load_at_start},
        }
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    from weibo_sentiment.output import write_json

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_json(report, args.output, kind="loadtest")
    lat = report["latency_ms"]
    print(f"{report['requests']} requests ({report['texts']} texts) in {report['elapsed_s']} s: "
          f"{report['requests_per_s']} requests/s, {report['texts_per_s']} texts/s; "
          f"latency p50 {lat['p50']} ms, p99 {lat['p99']} ms; {report['errors']} errors, "
          f"{report['wrong_answers']} wrong answers; "
          f"{report['requests_per_model_call']} requests per model call; "
          f"swap to revision {report['swap']['revision']} took {report['swap']['took_ms']} ms "
          f"(in flight for b: {report['swap']['requests_for_b_in_flight_during_swap']}); "
          f"/healthz p50 {report['healthz_ms']['p50']} ms, max {report['healthz_ms']['max']} ms; "
          f"server CPU {report['server_cpu_ms_per_request']} ms per request "
          f"(load average at start {report['setup']['machine']['load_average_1min_at_start']})")
    print(f"results written to {args.output}")
    return 0 if report["errors"] == 0 and report["wrong_answers"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
