# Two commands on a fresh machine:
#   make up     set everything up, then run the system (API, worker, Flower; embedded Postgres/Redis if unset)
#   make test   set everything up, then run the tests (real Postgres and Redis, tiny real BLIP-2 checkpoints)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install browser up test lint demo demo-models migrate api worker flower compose-up clean

install: $(STAMP)

# torch is pinned in pyproject.toml to the CPU wheel this project is developed with; install a
# CUDA build of the same version first on GPU machines (see README, "GPUs").
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,lint]'
	rm -f $(VENV)/.installed-* && touch $@

# Debian's chromium for the browser tests (they skip without it; CI installs it and requires them).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

up: install
	$(BIN)/blip2-jobs up

test: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy blip2 cli jobs api worker bench blip2_jobs

# The library's command line on the default model, without the queue: a shapes picture drawn by PIL
# (not by the generator the model was trained on), 256 px: a red circle on the left, a blue square at the top.
demo: install
	mkdir -p data
	$(BIN)/python -c "from PIL import Image, ImageDraw; im = Image.new('RGB', (256, 256), 'white'); draw = ImageDraw.Draw(im); draw.ellipse((20, 97, 82, 159), fill='red'); draw.rectangle((102, 25, 154, 77), fill='blue'); im.save('data/shapes.png')"
	@echo "drawn: a red circle on the left and a blue square at the top (the circle is red)"
	$(BIN)/blip2-jobs caption data/shapes.png
	$(BIN)/blip2-jobs vqa data/shapes.png --question "what colour is the circle?"

# Re-train the demo models in blip2/pretrained/ through the service's own jobs (24 minutes on two cores with
# THREADS=2 on a machine left to it; the default, one thread, leaves a core to other work).
demo-models: install
	$(BIN)/python scripts/train_demo_models.py --threads $(or $(THREADS),1)

migrate: install
	$(BIN)/blip2-jobs migrate

api: install
	$(BIN)/blip2-jobs api

worker: install
	$(BIN)/blip2-jobs worker

flower: install
	$(BIN)/blip2-jobs flower

compose-up:
	docker compose up -d --build

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
