# Every target runs inside .venv, created by `make install`.
PY      ?= .venv/bin/python
WORK    ?= work
CORPUS  ?= $(WORK)/corpus
CACHE   ?= $(WORK)/roi_cache.zarr
LOCALIZE_CONFIG ?= $(WORK)/standins/localize.yaml
PRETRAIN_CONFIG ?= configs/pretrain/tiny_cpu.yaml

.PHONY: install test sample localize inspect pretrain finetune demo bench lint

install:
	python3 -m venv .venv
	.venv/bin/pip install --upgrade pip
	# torch first, pinned exactly: a looser spec pulls a multi-GB download (see README).
	.venv/bin/pip install torch==2.14.1 torchvision==0.29.1
	.venv/bin/pip install -e '.[dev]'

test:
	$(PY) -m pytest -n 2 -q

sample:
	$(PY) -m data sample --out $(CORPUS)

localize:
	$(PY) -m localize run --config $(LOCALIZE_CONFIG) --corpus $(CORPUS) --cache $(CACHE)

inspect:
	$(PY) -m localize inspect --cache $(CACHE) --out $(WORK)/inspect

pretrain:
	$(PY) -m pretrain fit --config $(PRETRAIN_CONFIG) --data.corpus $(CORPUS) --data.cache $(CACHE)

finetune:
	$(PY) -m finetune classify fit --config configs/finetune/classify_tiny.yaml

bench:
	$(PY) bench/cache_io.py

lint:
	$(PY) -m ruff check .
