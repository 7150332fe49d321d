# lowbit: `make demo` and `make test` do all set-up (Debian packages, build) themselves.
BUILD ?= build
JOBS ?= $(shell nproc)
DATA ?= $(abspath ../shared/data)

.PHONY: deps build demo study test test-all test-sanitize fuzz-build fuzz-smoke fuzz bench bench-python bench-model clean

deps:
	@bash scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DLOWBIT_DATA_DIR=$(DATA) > /dev/null
	@cmake --build $(BUILD) -j $(JOBS)

demo: build
	@bash scripts/demo.sh $(BUILD)/lowbit

# A study (studies/NAME.json, docs/studies/README.md): builds the CLI, runs the sweep into
# studies-out/NAME/ (results store study.db, resumable: a rerun skips the recorded runs), then
# its report (runs.csv/.json, figures, index.html) in studies-out/NAME/report. TINY=1 runs it at
# CI size into studies-out/NAME-tiny/.
NAME ?=
TINY ?= 0
STUDY_OUT = studies-out/$(NAME)$(if $(filter 1,$(TINY)),-tiny)
study: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DLOWBIT_DATA_DIR=$(DATA) > /dev/null
	@cmake --build $(BUILD) -j $(JOBS) --target lowbit_cli
	@test -n "$(NAME)" || { echo "make study NAME=X: one of $$(ls studies | sed -n 's/\.json$$//p' | tr '\n' ' ')"; exit 2; }
	@test -f studies/$(NAME).json || { echo "studies/$(NAME).json: no such study"; exit 2; }
	@mkdir -p $(STUDY_OUT)
	@LOWBIT_DATA_DIR=$(DATA) $(BUILD)/lowbit explore --config studies/$(NAME).json --db $(STUDY_OUT)/study.db \
	  $(if $(filter 1,$(TINY)),--tiny) --json > $(STUDY_OUT)/runs.json.tmp && mv $(STUDY_OUT)/runs.json.tmp $(STUDY_OUT)/runs.json
	@$(BUILD)/lowbit report --db $(STUDY_OUT)/study.db -o $(STUDY_OUT)/report
	@echo "study $(NAME): $(STUDY_OUT)/runs.json, $(STUDY_OUT)/report/index.html"

# The CI suite: every test binary once (ctest label sanity); then each libFuzzer harness for a few
# seconds when clang++ with libFuzzer is present (docs/robustness.md; FUZZ_SMOKE=0 skips it).
FUZZ_SMOKE ?= 1
test: build
	@cd $(BUILD) && ctest --output-on-failure -L sanity -j $(JOBS)
	@if [ "$(FUZZ_SMOKE)" = 1 ] && printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' | \
	   clang++ -fsanitize=fuzzer -x c++ - -o $(BUILD)/fuzz-probe >/dev/null 2>&1; then \
	   $(MAKE) --no-print-directory fuzz-smoke; \
	 else echo "fuzz: smoke run skipped (FUZZ_SMOKE=1 and clang++ with libFuzzer run it)"; fi

# The libFuzzer harnesses of fuzz/ (clang, ASan + UBSan), in their own build directory.
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 3600
fuzz-build: deps
	@CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLOWBIT_FUZZ=ON \
	  -DLOWBIT_DATA_DIR=$(DATA) > /dev/null
	@cmake --build $(FUZZ_BUILD) -j $(JOBS) --target lowbit_fuzzers

# Seconds per harness (make test); `make fuzz` runs each for FUZZ_SECONDS (an hour by default).
fuzz-smoke: fuzz-build
	@bash scripts/fuzz.sh $(FUZZ_BUILD) 5 $(DATA)

fuzz: fuzz-build
	@bash scripts/fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(DATA)

# The CI suite built with AddressSanitizer + UndefinedBehaviorSanitizer (gcc), in build-asan.
test-sanitize: deps
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLOWBIT_SANITIZE=ON -DLOWBIT_BUILD_BENCH=OFF \
	  -DLOWBIT_DATA_DIR=$(DATA) > /dev/null
	@cmake --build build-asan -j $(JOBS)
	@cd build-asan && ctest --output-on-failure -L sanity -j $(JOBS)

# Every ctest entry: label sanity plus label long (the kernels' randomised differential cases
# rerun on eight more data seeds, test_kernels_seed1..8).
test-all: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

bench: build
	@$(BUILD)/lowbit bench int8/c int4/g128 e4m3fn/c e4m3fn/t mxfp4 nvfp4 nf4 q8_0 q4_0 e2m1/g32~sr e2m1/g32~sr8 --threads 1
	@$(BUILD)/lowbit bench int8/c int4/g128 e4m3fn/c e4m3fn/t mxfp4 nvfp4 nf4 q8_0 q4_0 e2m1/g32~sr e2m1/g32~sr8 --threads 2

# The Python package: lowbit.fake_quantize from Python vs the C++ kernel on the same buffer, and
# lowbit.torch vs the same quantization in PyTorch ops, and a quantized torch model's tokens/s.
bench-python: build
	@PYTHONPATH=$(BUILD)/python /usr/bin/python3 bench/bench_python.py

# eval throughput of a synthetic 110M-parameter Llama (prefill, windows of 512) next to sgemm.
bench-model: build
	@test -f $(BUILD)/llama110m.safetensors || $(BUILD)/lowbit synth --arch llama --dim 768 --layers 12 \
	  --heads 12 --hidden 2048 --vocab 32000 --ctx 512 -o $(BUILD)/llama110m.safetensors
	@$(BUILD)/lowbit eval --model $(BUILD)/llama110m.safetensors --data $(DATA)/text/tinystories_val_sample.txt \
	  --max-tokens 4096 --sgemm-peak

clean:
	rm -rf $(BUILD)
