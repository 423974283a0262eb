# The few commands a newcomer needs. Everything installs into .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build the suite is tested against (a CUDA build; it also runs on CPUs).
TORCH ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev,train
OFFLINE := HF_HUB_OFFLINE=1 WANDB_MODE=disabled
# Prebuilt wheels (mmcv 2.1.0 for this torch) that tools/build_mmcv.sh installs from instead of building; CI has one
# beside the clone. Without it the build takes about 20 minutes on 2 cores, once (cached in ~/.cache/zoo/wheels).
WHEELHOUSE ?= $(wildcard ../shared/wheels)

.PHONY: venv mm gpu-check test lint clean demo bench bench-kernels bench-kernels-gpu bench-kernels-load bench-plots aot

$(BIN)/.installed: setup.cfg pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(BIN)/.installed

# The mm extra (mmengine, mmcv 2.1.0 with compiled ops, mmdet, mmsegmentation) for configs/mmdet and configs/mmseg.
$(BIN)/.installed-mm: $(BIN)/.installed tools/build_mmcv.sh
	ZOO_WHEELHOUSE=$(WHEELHOUSE) PYTHON=$(BIN)/python bash tools/build_mmcv.sh
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS),mm]"
	touch $@

mm: $(BIN)/.installed-mm

lint: venv
	$(BIN)/ruff check .

# Triton-interpreter tests run in a process of their own: TRITON_INTERPRET must be set before triton
# is imported. They go first so that the main suite's summary closes the output; pytest's exit code 5
# means the selection was empty.
test: lint mm
	$(OFFLINE) TRITON_INTERPRET=1 $(BIN)/python -m pytest -m "triton and not cuda" -p no:cacheprovider -q; \
		rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]
	$(OFFLINE) $(BIN)/python -m pytest -m "not triton" -p no:cacheprovider

# Train VAN-B0 from scratch on scikit-learn's handwritten digits (embedded, nothing downloaded), then evaluate
# it on the held-out quarter: accuracy, a confusion summary and throughput. A few minutes on 2 CPU cores.
demo: venv
	$(OFFLINE) $(BIN)/python tools/train.py configs/classification/demo_digits.yaml
	$(OFFLINE) $(BIN)/python tools/eval.py --checkpoint output/demo_digits/last.pth

# The zoo-wide table at 224 on the CPU, each zoo model beside timm's own where timm has one.
bench: venv
	$(OFFLINE) $(BIN)/python tools/benchmark.py --models 'zoo_*' --resolutions 224 --batch-size 1 --runs 5 --warmup 1

# Every CPU kernel case in configs/benchmarks/kernels/ (the op beside its anchors) in the modes the case lists;
# bench-kernels-gpu runs the cases marked `device: cuda` (the Triton kernels) on a CUDA machine.
bench-kernels: venv
	@for case in configs/benchmarks/kernels/*/*.yaml; do \
		grep -q '^device: cuda' $$case && continue; echo "## $$case"; \
		$(OFFLINE) $(BIN)/python tools/benchmark.py --case $$case --runs 5 --warmup 1 || exit 1; \
	done

bench-kernels-gpu: venv
	@for case in configs/benchmarks/kernels/*/*.yaml; do \
		grep -q '^device: cuda' $$case || continue; echo "## $$case"; \
		$(OFFLINE) $(BIN)/python tools/benchmark.py --case $$case --runs 10 --warmup 3 || exit 1; \
	done

# bench-kernels under contention: every CPU case idle, then while a process the harness starts and stops keeps
# LOAD threads busy (as dataloader workers or a second DDP rank do); prints each speed-up over its anchors in
# both and the share kept (goal >= 2/3). LOAD defaults to every core.
LOAD ?= $(shell nproc 2>/dev/null || echo 2)
bench-kernels-load: venv
	@for case in configs/benchmarks/kernels/*/*.yaml; do \
		grep -q '^device: cuda' $$case && continue; echo "## $$case"; \
		$(OFFLINE) $(BIN)/python tools/benchmark.py --case $$case --runs 5 --warmup 1 --compare-load $(LOAD) || exit 1; \
	done

# Every family (its smallest variant with weights) beside its anchors (timm's model of the same name, or those in
# configs/benchmarks/models/<family>.yaml) at 224, 512, 800 and 1024 on the CPU, batch 1: model_cards/bench/
# results.csv, <family>.png and overview.png, each stating the machine, threads and date. Long: run it on an idle
# machine. `tools/benchmark.py --render model_cards/bench/results.csv` redraws the plots without measuring.
bench-plots: venv
	$(OFFLINE) $(BIN)/python tools/benchmark.py --families --runs 5 --warmup 1 --out-dir model_cards/bench

# Compile every Triton kernel for sm_80 and sm_90 without a GPU: registers, spills, shared memory, wgmma.
aot: venv
	$(BIN)/python -m kernels.aot

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache

# On a CUDA machine: the Triton suite on the device (fp32/fp16/bf16, forward and backward against the reference),
# the GPU kernel cases (GB/s against the card's peak) and model throughput eager/compiled beside timm, in one report
# (gpu_check/report.md); under 8 minutes on one GPU.
gpu-check: venv
	bash tools/gpu_check.sh gpu_check
