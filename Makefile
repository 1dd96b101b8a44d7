# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Everything installs into a project-local virtual environment, torch's CPU build first
# (an unpinned torch would pull gigabytes of CUDA packages).

VENV   ?= .venv
PY     := $(VENV)/bin/python
ATTN   := $(VENV)/bin/attn
TORCH  ?= torch==2.13.0
# Where a CUDA build would come by default (plain PyPI on Linux), point pip at PyTorch's CPU
# wheels: `make TORCH_INDEX=https://download.pytorch.org/whl/cpu demo`. Empty: the configured index.
TORCH_INDEX ?=
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast test-portable bench bench-quality bench-scale bench-length bench-taxonomy bench-taxonomy-transformer bench-coverage bench-parity gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: install
	$(PY) -m cli.demo

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# The model, kernel, search, translation and training tests as on a CPU without AVX-512 and
# without attn's fast paths: stock PyTorch only, oneDNN and ATen limited to AVX2.
PORTABLE_ENV   := ATTN_CPU_KERNELS=off ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
PORTABLE_TESTS := tests/test_models.py tests/test_attention.py tests/test_kernels.py tests/test_linear.py \
                  tests/test_fastops.py tests/test_lstm_step.py tests/test_search.py tests/test_translate.py \
                  tests/test_training.py tests/test_resume.py

test-portable: install
	$(PORTABLE_ENV) $(PY) -m pytest -q $(PORTABLE_TESTS)

bench: install
	$(PY) -m bench.run

bench-quality: install
	$(PY) -m bench.quality

bench-scale: install
	$(PY) -m bench.scale

# Each Transformer self-attention against the source length, 128 to 4096: training and decoding
# time per token, peak RSS per token (details: bench/length.py; `--quick` for a tiny run).
bench-length: install
	$(PY) -m bench.length

# Every RNN attention mechanism, 4 minutes each on the full corpus (about 85 minutes).
bench-taxonomy: install
	$(PY) -m bench.taxonomy

# Every Transformer attention mechanism, 5 minutes each on the full corpus (about 60 minutes).
bench-taxonomy-transformer: install
	$(PY) -m bench.taxonomy --sweep transformer --minutes 5

# Attention paid twice with and without coverage, from bench-taxonomy's runs (a few minutes).
bench-coverage: install
	$(PY) -m bench.coverage_pair

# attn against fairseq 0.12.2 at equal updates (2,000 of config T, two attn seeds): valid curves,
# test BLEU, bench/out/parity.{json,png}; about 4 hours on 2 cores, resumable. Needs the peers'
# fairseq (../shared/bench/peers/setup_envs.sh). Options: make bench-parity PARITY="--updates 1000".
bench-parity: install
	$(PY) -m bench.parity $(PARITY)

# Every GPU code path once on the bundled sample corpus, then one table (under 9 minutes on
# one H100; without a GPU it says so and exits 0). Details: bench/gpu_check.py.
gpu-check: install
	$(PY) -m bench.gpu_check

clean:
	rm -rf runs bench/out .pytest_cache
