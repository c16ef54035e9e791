# The two commands a newcomer needs (see README.md):
#   make demo   installs everything, runs a real ComfyUI workflow with the pack's nodes headless, writes images
#   make test   installs everything, runs the whole test suite
# With your own ComfyUI: COMFYUI_PATH=/path/to/ComfyUI PYTHON=/path/to/its/python make test
ifdef COMFYUI_PATH
PY := $(or $(PYTHON),python3)
else
PY := .venv/bin/python
endif
DEMO_OUT ?= demo_output

.PHONY: install test demo workflows

install:
	scripts/install_comfyui.sh

test:
	scripts/install_comfyui.sh --with-browser
	$(PY) -m pytest -q tests

demo: install
	$(PY) scripts/run_demo.py --out $(DEMO_OUT)

workflows: install
	$(PY) scripts/make_workflows.py
	$(PY) scripts/make_thumbnails.py
