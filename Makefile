# Every target runs inside .venv, created by `make install`.
PY      ?= .venv/bin/python
WORK    ?= work
CORPUS  ?= $(WORK)/corpus
CACHE   ?= $(WORK)/roi_cache.zarr
PACKED  ?= $(WORK)/packed.zarr
SQUARE  ?=
# The store pretraining reads: with SQUARE=N a square store of its own (the localize run's store is a max-side one,
# which a square pack refuses to change), unless PACKED names one.
PRETRAIN_PACKED ?= $(if $(SQUARE),$(if $(filter $(WORK)/packed.zarr,$(PACKED)),$(WORK)/packed_$(SQUARE).zarr,$(PACKED)),$(PACKED))
# The backbone `make export` writes; `make finetune` starts from it when it exists (else from scratch, said so).
BACKBONE ?= $(WORK)/backbone.pt
SMALL   ?= $(WORK)/small
LOCALIZE_CONFIG ?= $(SMALL)/localize.yaml
PRETRAIN_CONFIG ?= configs/pretrain/tiny_cpu.yaml
FINETUNE_CONFIG ?= configs/finetune/classify_tiny.yaml
MASKEDCLIP_CONFIG ?= configs/maskedclip/cpu_tiny.yaml
REPORTS ?= $(CORPUS)/reports.csv
CLIP    ?= local-dir:$(WORK)/maskedclip/clip
ZEROSHOT_PROMPTS ?= configs/zeroshot/sample.yaml

.PHONY: install test sample standins smallmodels localize eval inspect pretrain export finetune demo bench lint \
	experiment maskedclip maskedclip-export zeroshot bench-gpu bench-gpu-dry bench-gpu-wheels \
	mutate mutate-recheck mutate-report

install:
	python3 -m venv .venv
	.venv/bin/pip install --upgrade pip
	# Exact versions from constraints.txt (pyproject.toml states ranges). torch first: a looser torch pulls a
	# multi-GB download (see README).
	.venv/bin/pip install -c constraints.txt torch torchvision
	.venv/bin/pip install -c constraints.txt -e '.[dev]'

test:
	$(PY) -m pytest -n 2 -q --durations=15

sample:
	$(PY) -m data sample --out $(CORPUS)

standins:
	$(PY) -m localize stand-ins --out $(WORK)/standins

# Small CLIP + SAM trained here on synthetic sample corpora (other seeds than $(CORPUS)'s), + their localize.yaml
smallmodels:
	$(PY) -m smallmodels train --out $(SMALL)

# Uses $(LOCALIZE_CONFIG); the default one (the small models) is trained first when missing. Packs the images in
# the same pass.
localize:
	@test -f $(LOCALIZE_CONFIG) || [ "$(LOCALIZE_CONFIG)" != "$(SMALL)/localize.yaml" ] || \
	  $(MAKE) --no-print-directory smallmodels
	$(PY) -m localize run --config $(LOCALIZE_CONFIG) --corpus $(CORPUS) --cache $(CACHE) $(if $(PACKED),--pack $(PACKED))

eval:
	$(PY) -m localize eval --cache $(CACHE) --truth $(CORPUS)/truth --out $(WORK)/localize_eval.json

inspect:
	$(PY) -m localize inspect --cache $(CACHE) --corpus $(CORPUS) --out $(WORK)/inspect

# Reads the images from the packed store (made, or completed, first: docs/PACKING.md); PACKED= reads the files.
# SQUARE=N packs N x N images into $(WORK)/packed_N.zarr (augment: resize), the loader's fast path, and trains at
# input size N: e.g. `make pretrain SQUARE=64` after `make localize`, or for the GPU preset
# `make pretrain PRETRAIN_CONFIG=configs/pretrain/mwm_resnet50.yaml SQUARE=224`.
pretrain:
	@if [ -n "$(PRETRAIN_PACKED)" ]; then $(PY) -m data pack --corpus $(CORPUS) --cache $(CACHE) \
	  --out $(PRETRAIN_PACKED) $(if $(SQUARE),--square $(SQUARE)) --no-progress; fi
	$(PY) -m pretrain fit --config $(PRETRAIN_CONFIG) --data.corpus $(CORPUS) --data.cache $(CACHE) \
	  $(if $(PRETRAIN_PACKED),--data.packed $(PRETRAIN_PACKED)) $(if $(SQUARE),--model.input_size $(SQUARE)) \
	  --trainer.default_root_dir $(WORK)/pretrain

# The newest last.ckpt under $(WORK)/pretrain unless PRETRAIN_CKPT is given.
export:
	$(PY) -m pretrain export $${PRETRAIN_CKPT:-$$(ls -t $(WORK)/pretrain/logs/version_*/checkpoints/last.ckpt | head -n 1)} \
	  --out $(BACKBONE)

# MaskedCLIP on the corpus, its ROI cache and its image-report pairs (the sample corpus writes $(CORPUS)/reports.csv)
maskedclip:
	$(PY) -m pretrain maskedclip fit --config $(MASKEDCLIP_CONFIG) --data.corpus $(CORPUS) --data.cache $(CACHE) \
	  --data.reports $(REPORTS) --trainer.default_root_dir $(WORK)/maskedclip

# The newest last.ckpt under $(WORK)/maskedclip unless MASKEDCLIP_CKPT is given -> open_clip folder + timm ViT
maskedclip-export:
	$(PY) -m pretrain maskedclip export \
	  $${MASKEDCLIP_CKPT:-$$(ls -t $(WORK)/maskedclip/logs/version_*/checkpoints/last.ckpt | head -n 1)} \
	  --open-clip $(WORK)/maskedclip/clip --timm $(WORK)/maskedclip/vit.pt

# Zero-shot classification of the corpus's test split with $(CLIP) (default: the MaskedCLIP export)
zeroshot:
	$(PY) -m finetune zeroshot --clip $(CLIP) --prompts $(ZEROSHOT_PROMPTS) --root $(CORPUS) \
	  --results-dir $(WORK)/results/finetune

# Starts from $(BACKBONE) (`make pretrain export`) when it exists, else from the config's init (scratch), said so.
finetune:
	@test -f $(BACKBONE) && echo "finetune: from the exported backbone $(BACKBONE)" || \
	  echo "finetune: no $(BACKBONE) (make pretrain export): the config's init ($(FINETUNE_CONFIG))"
	$(PY) -m finetune classify fit --config $(FINETUNE_CONFIG) --data.root $(CORPUS) \
	  $(if $(wildcard $(BACKBONE)),--model.init $(BACKBONE)) \
	  --trainer.default_root_dir $(WORK)/finetune --results_dir $(WORK)/results/finetune

# The newcomer's end-to-end path on CPU, no network: sample corpus -> localize -> inspect -> pretrain -> probe.
# By default it localizes with small models trained here on synthetic data (once; reused from $(SMALL)); set
# LOCALIZE_CONFIG to a config with real BiomedCLIP + SAM weights to use them.
demo:
	$(PY) -m data sample --out $(CORPUS)
	@if [ "$(LOCALIZE_CONFIG)" = "$(SMALL)/localize.yaml" ]; then \
	  test -f $(LOCALIZE_CONFIG) || $(MAKE) --no-print-directory smallmodels || exit 1; \
	  echo "demo: ============================================================================"; \
	  echo "demo: SMALL MODELS TRAINED ON SYNTHETIC DATA ($(SMALL)): a tiny CLIP and a tiny SAM"; \
	  echo "demo: trained here on other sample corpora. Their ROIs are meaningful on this synthetic"; \
	  echo "demo: corpus only; they are not BiomedCLIP or SAM. Real weights: docs/MODELS.md."; \
	  echo "demo: ============================================================================"; \
	elif grep -q '^untrained: true' "$(LOCALIZE_CONFIG)"; then \
	  echo "demo: using UNTRAINED stand-in models ($(LOCALIZE_CONFIG)); their ROIs carry no meaning."; \
	else \
	  echo "demo: localizing with $(LOCALIZE_CONFIG)"; \
	fi
	$(MAKE) --no-print-directory localize eval inspect
	$(MAKE) --no-print-directory pretrain export
	$(PY) -m finetune classify fit --config $(FINETUNE_CONFIG) --data.root $(CORPUS) \
	  --model.init $(BACKBONE) --model.mode linear_probe \
	  --trainer.default_root_dir $(WORK)/finetune --results_dir $(WORK)/results/finetune
	@echo "demo artefacts:"
	@echo "  corpus           $(CORPUS)"
	@echo "  ROI cache        $(CACHE)"
	@echo "  packed images    $(PACKED)"
	@echo "  localize eval    $(WORK)/localize_eval.json"
	@echo "  inspect page     $(WORK)/inspect/index.html"
	@echo "  pretraining      $(WORK)/pretrain/logs (TensorBoard + CSV, checkpoints, panels)"
	@echo "  backbone         $(WORK)/backbone.pt"
	@echo "  linear probe     $(WORK)/results/finetune (results JSON + confusion matrix)"

# The masking-strategy study (random vs differentiated masking, ROI sources, no pretraining) -> table + plot.
# Resumable: finished runs are not rerun. The default is the CPU preset on the sample corpus (~20 min).
EXPERIMENT_CONFIG ?= configs/experiment/cpu_sample.yaml
experiment:
	$(PY) -m study --config $(EXPERIMENT_CONFIG)

# Each prints one JSON object; ratios are against baselines measured in the same run.
bench:
	$(PY) bench/cache_io.py
	$(PY) bench/pretrain_step.py
	$(PY) bench/maskedclip_step.py
	$(PY) bench/localize.py --size tiny

# Every real-size figure in one run on one H100/H200 (<= 8 min): one JSON per part + summary.json in GPU_OUT ($OUT
# when set). bench-gpu-dry: the same parts at tiny sizes on the CPU. bench-gpu-wheels: the packages the device
# machine's image lacks, as wheels for its Python 3.12 (bench/gpu_wheels.txt). See docs/BENCHMARKS.md, "GPU run".
GPU_OUT ?= $(if $(OUT),$(OUT),$(WORK)/gpu_run)
GPU_PYTHON ?= 3.12
bench-gpu:
	PY=$(PY) bash bench/gpu.sh --out $(GPU_OUT)

bench-gpu-dry:
	PY=$(PY) bash bench/gpu.sh --dry-run --out $(WORK)/gpu_dry_run

bench-gpu-wheels:
	rm -rf $(WORK)/gpu_wheels
	$(PY) -m pip download --no-deps --only-binary=:all: --implementation cp --python-version $(GPU_PYTHON) \
	  $(foreach n,34 31 28 27 17,--platform manylinux_2_$(n)_x86_64) --platform manylinux2014_x86_64 \
	  -d $(WORK)/gpu_wheels -r bench/gpu_wheels.txt

# Mutation testing (mutmut) of the method-critical modules, each against its own tests; not part of `make test`.
# MODULE=path/to/module.py for one module (the one you changed). Report: work/mutation/report.md. docs/TESTING.md.
MODULE ?=
MUTATE_JOBS ?= 2
mutate:
	$(PY) tools/mutate.py run $(MODULE) --jobs $(MUTATE_JOBS)

mutate-recheck:
	$(PY) tools/mutate.py recheck $(MODULE) --jobs $(MUTATE_JOBS)

mutate-report:
	$(PY) tools/mutate.py report

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
