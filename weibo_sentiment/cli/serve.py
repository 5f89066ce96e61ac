"""`serve`: the HTTP API and web page (weibo_sentiment.serve) with its limits."""

from __future__ import annotations

import argparse

from .options import (
    adapter_args,
    backend_args,
    base_args,
    calibration_args,
    domain_args,
    long_text_args,
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP API and web page for one base with many adapters (micro-batched)")
    adapter_args(p, many=True)
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    backend_args(p, backend_help="torch (default; many adapters, hot swap) or ONNX Runtime on the CPU with one "
                                 "adapter merged into its base: onnx (fp32) or onnx-int8",
                 model_help="serve a directory written by `weibo-sentiment export` (instead of --adapter)")
    p.add_argument("--api-key", default=None,
                   help="require this key on every request (default: $WEIBO_SENTIMENT_API_KEY, else none)")
    p.add_argument("--adapter-root", metavar="DIR",
                   help="let POST/DELETE /v1/adapters load and unload adapters under DIR, and PUT /v1/default "
                        "change the default one (default: off)")
    p.add_argument("--max-texts", type=int, default=256, help="texts per request (default: 256)")
    p.add_argument("--max-chars", type=int, default=2000, help="characters per text (default: 2000)")
    p.add_argument("--max-body-bytes", type=int, default=None,
                   help="request body size (default: enough for --max-texts texts of --max-chars characters)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its batch (default: 5)")
    p.add_argument("--max-queue", type=int, default=2048, metavar="TEXTS",
                   help="texts waiting for the model before new requests get 503 with Retry-After (default: "
                        "2048, 8 full requests: ~2.6 s of work for the tiny model on 2 CPU cores, which served "
                        "776 texts/s in `make loadtest`; the uer model on 2 CPU cores predicts ~17 texts/s, 2 "
                        "minutes for 2048: lower it there, with --max-texts, e.g. both 64; at least --max-texts)")
    p.add_argument("--threads", type=int, help="CPU threads for the model (default: all cores but one)")
    calibration_args(p)
    domain_args(p)
    long_text_args(p)  # the server's setting; a request may ask for the other with "long_text"
    p.add_argument("--allowed-hosts", "--allow-host", dest="allow_host", action="extend", nargs="+", default=[],
                   metavar="NAME",
                   help="extra Host header names to answer to (e.g. behind a proxy); every request naming another "
                        "host gets 400. Always accepted: the loopback names and the --host name, and for 0.0.0.0 "
                        "or :: this machine's host name and addresses; '*' accepts any (not advised)")
    p.add_argument("--feedback", metavar="FILE",
                   help="let POST /v1/feedback (and the web page) append label corrections to this JSONL store "
                        "(default: feedback.jsonl in --adapter-root when given, else off)")
    p.add_argument("--feedback-max-bytes", type=int, default=64 * 1024 * 1024, metavar="N",
                   help="size of the feedback store beyond which corrections get 507 (default: 64 MiB)")
    base_args(p, None)
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..serve import serve

    if args.domain and args.no_calibration:
        raise UserError("--domain sets a calibration temperature; it cannot go with --no-calibration")

    return serve(args.adapter, host=args.host, port=args.port, backend=args.backend, model=args.model,
                 use=args.use, base_model=args.base_model, model_dir=args.model_dir, device=args.device,
                 api_key=args.api_key, adapter_root=args.adapter_root,
                 max_texts=args.max_texts, max_chars=args.max_chars, max_body_bytes=args.max_body_bytes,
                 batch_wait_ms=args.batch_wait_ms, batch_size=args.batch_size, allowed_hosts=args.allow_host,
                 threads=args.threads, max_queue=args.max_queue, calibrated=not args.no_calibration,
                 allow_other_base=args.allow_other_base, feedback=args.feedback,
                 feedback_max_bytes=args.feedback_max_bytes, domain=args.domain, long_text=args.long_text,
                 stride=args.stride)
