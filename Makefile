# Two commands: `make demo` and `make test`. Each sets everything up on a fresh machine by itself.
VENV      := .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
# Debian packages that carry the real data the demo and tests read (see DATA.md in the project notes)
DEB_DATA  := ragout-examples smalt-examples kleborate-examples bowtie2-examples espeak-ng sox dataset-fashion-mnist mricron-data

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

# OpenMP threads that sleep instead of spinning while they wait: on a busy shared 2-core box (load 6), a demo
# training step took 6x the CPU time and 8x the wall time with torch's 2 spinning threads (measured)
demo: install
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) -m mambaverse.genomics.demo

# Triton kernels are tested on CPU through Triton's interpreter.
test: install
	TRITON_INTERPRET=1 $(PY) -m pytest tests

bench-cpu: install
	$(PY) benchmarks/cpu_scan.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
