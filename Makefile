# Two commands: `make demo` and `make test`. Each sets everything up on a fresh machine by itself.
VENV      := .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
# Debian packages that carry the real data the demo and tests read (see DATA.md in the project notes)
DEB_DATA  := ragout-examples smalt-examples bowtie2-examples espeak-ng sox dataset-fashion-mnist mricron-data

.PHONY: demo test install data bench-cpu clean

install: $(STAMP) data

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test,triton,bench]'
	touch $(STAMP)

data:
	@missing=$$(for p in $(DEB_DATA); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian data packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: install
	$(PY) -m mambaverse.genomics.demo

# Triton kernels are tested on CPU through Triton's interpreter.
test: install
	TRITON_INTERPRET=1 $(PY) -m pytest tests

bench-cpu: install
	$(PY) benchmarks/cpu_scan.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
