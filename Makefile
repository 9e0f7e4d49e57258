# shoal: `make run` starts a local cluster, `make test` runs the whole suite.
# Both install what is missing first: a virtualenv with shoal and its tools, and (with apt, as
# root) the system packages the tests drive for real.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHOAL := $(VENV)/bin/shoal
DATA_DIR ?= .shoal-dev
LISTEN ?= 127.0.0.1:8420
NODES ?= 2
PYTEST_ARGS ?=

.PHONY: run test bench lint fmt deps system-deps web-deps clean

$(VENV)/.installed: pyproject.toml setup.py
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || $(MAKE) --no-print-directory apt-python-venv
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

deps: $(VENV)/.installed

apt-python-venv:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip

# System packages the suite uses for real. Each is installed only when it is missing.
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v qemu-system-x86_64 >/dev/null || missing="$$missing qemu-system-x86"; \
	command -v qemu-img >/dev/null || missing="$$missing qemu-utils"; \
	command -v ssh >/dev/null || missing="$$missing openssh-client"; \
	command -v mkfs.ext4 >/dev/null || missing="$$missing e2fsprogs"; \
	command -v cpio >/dev/null || missing="$$missing cpio"; \
	command -v syslinux >/dev/null || missing="$$missing syslinux"; \
	ls /usr/lib/syslinux/mbr/mbr.bin >/dev/null 2>&1 || missing="$$missing syslinux-common"; \
	ls /usr/lib/SYSLINUX.EFI/efi64/syslinux.efi >/dev/null 2>&1 || missing="$$missing syslinux-efi"; \
	command -v mcopy >/dev/null || missing="$$missing mtools"; \
	command -v mkfs.fat >/dev/null || missing="$$missing dosfstools"; \
	command -v sfdisk >/dev/null || missing="$$missing fdisk"; \
	ls /usr/share/OVMF/OVMF_CODE_4M.fd >/dev/null 2>&1 || missing="$$missing ovmf"; \
	command -v docker-registry >/dev/null || missing="$$missing docker-registry"; \
	command -v skopeo >/dev/null || missing="$$missing skopeo"; \
	command -v wget >/dev/null || missing="$$missing wget"; \
	command -v busybox >/dev/null || missing="$$missing busybox"; \
	command -v git >/dev/null || missing="$$missing git"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v haproxy >/dev/null || missing="$$missing haproxy"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  systemctl disable --now postgresql >/dev/null 2>&1 || true; \
	  systemctl disable --now docker-registry >/dev/null 2>&1 || true; \
	  systemctl disable --now haproxy >/dev/null 2>&1 || true; \
	fi

# The web UI's front-end packages, from npm through web/package-lock.json, copied into
# src/shoal/web/static/vendor/ (npm ci runs only when web/node_modules is older than the lock file).
web-deps: deps
	@command -v npm >/dev/null || { \
	  echo "installing: nodejs npm"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm; \
	}
	$(PY) -m shoal.web.vendor

run: deps system-deps web-deps
	$(PY) -m shoal.testguest build >/dev/null
	$(SHOAL) dev --data-dir $(DATA_DIR) --listen $(LISTEN) --backend auto --nodes $(NODES)

test: deps system-deps web-deps
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: deps web-deps system-deps
	$(PY) -m bench

lint: deps
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

fmt: deps
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) $(DATA_DIR) bench/results .pytest_cache .mypy_cache .ruff_cache \
	  web/node_modules src/shoal/web/static/vendor
