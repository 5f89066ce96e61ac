# weibo-sentiment: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED ?= ../shared
DEMO := .demo
# Tiny models run many small kernels: one thread is faster than two, and two threads spin-wait badly when
# anything else shares the cores (measured: 2.8 s vs 69 s for the same 3-epoch run beside one busy process).
TINY_ENV := OMP_NUM_THREADS=1

.PHONY: install demo test system-deps lint bench bench-scale loadtest clean

install: $(STAMP)

# torch is pinned to the CPU build that pip finds on this machine; a looser pin pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[serve,onnx,dev,cluster]"
	touch $(STAMP)

demo: export OMP_NUM_THREADS=1
demo: $(STAMP)
	rm -rf $(DEMO)  # the demo's own scratch folder (as `make clean`): each demo starts from nothing
	$(BIN)/weibo-sentiment init-model --preset tiny --vocab-from-data examples/weibo_sample.csv --output $(DEMO)/base
	$(BIN)/weibo-sentiment train --data examples/weibo_sample.csv --base-model $(DEMO)/base \
		--output $(DEMO)/adapter --epochs 20 --lr 2e-3 --validation-split 0.15
	$(BIN)/weibo-sentiment evaluate --adapter $(DEMO)/adapter --data examples/weibo_sample_heldout.csv
	$(BIN)/weibo-sentiment evaluate --adapter $(DEMO)/adapter --data examples/weibo_sample_heldout.csv --strip-emoticons
	$(BIN)/weibo-sentiment predict --adapter $(DEMO)/adapter \
		--text "这部电影太好看了，我非常喜欢！[哈哈]" --text "服务态度差，价格又贵，完全不推荐[怒]"

test: $(STAMP) system-deps
	$(BIN)/ruff check weibo_sentiment tests benchmarks train.py predict.py
	WEIBO_SHARED=$(SHARED) $(TINY_ENV) $(BIN)/pytest --ignore=tests/test_cluster.py
	# Ray's driver (signal handlers, worker processes) gets a pytest process of its own: sharing one with the
	# rest of the suite ended it silently when run under make.
	WEIBO_SHARED=$(SHARED) $(TINY_ENV) $(BIN)/pytest tests/test_cluster.py

# What the tests need beyond Python, from Debian's packages; a missing one must fail the run, never skip a test:
# chromium (about a minute) for the web page's test in a real headless browser (tests/test_browser.py), and a font
# with CJK glyphs (fonts-wqy-microhei, 1.6 MB) for pictures with Chinese label names (tests/test_plots.py; users
# need none: without one the pictures show label ids). Installed when we are root; otherwise we stop with what to
# install, rather than let pytest fail minutes later.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing="$$missing chromium"; \
	fc-list :lang=zh 2>/dev/null | grep -q . || missing="$$missing fonts-wqy-microhei"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	else \
		echo "make test needs Debian's packages$$missing: sudo apt-get install$$missing, then run make test again" >&2; \
		exit 1; \
	fi

# Ours vs the original recipe (training, inference, ONNX Runtime fp32/int8) on the uer-shaped model and real
# Weibo rows, <= 15 min on 2 cores: writes benchmarks/results/summary.json and summary.md.
bench: $(STAMP)
	WEIBO_SHARED=$(SHARED) $(BIN)/python benchmarks/speed/bench.py

# Scale (issue 12): streaming prediction's peak memory on 1,000,000 rows vs 10,000 and its speed vs the in-memory
# path (onnx-int8, ~20 min on 2 cores), then 1 vs 2 training processes on the CPU (torchrun, gloo); the Ray
# scoring figures when Ray is installed. Writes benchmarks/results/{streaming,ddp,ray}.json.
bench-scale: $(STAMP)
	WEIBO_SHARED=$(SHARED) $(BIN)/python benchmarks/scale/stream_scoring.py --backend onnx-int8
	WEIBO_SHARED=$(SHARED) OMP_NUM_THREADS=1 $(BIN)/python benchmarks/scale/ddp.py --device cpu --nprocs 1 2 --preset tiny \
		--out benchmarks/results
	if [ -f benchmarks/scale/ray_scoring.py ] && $(BIN)/python -c "import ray" 2>/dev/null; then \
		WEIBO_SHARED=$(SHARED) $(BIN)/python benchmarks/scale/ray_scoring.py; fi

# 2,000 requests at 32 concurrency to a loopback server with two adapters, one hot-swapped midway.
loadtest: $(STAMP)
	$(BIN)/python benchmarks/speed/loadtest.py --requests 2000 --concurrency 32

lint: $(STAMP)
	$(BIN)/ruff check weibo_sentiment tests benchmarks train.py predict.py

clean:
	rm -rf $(DEMO) .pytest_cache
