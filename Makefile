# fanout — the two commands that matter: `make demo` and `make test`.
#
# Prerequisites on the machine: a Rust toolchain (cargo), Node.js with npm, Python 3.
# Everything else is installed by these targets into .tools/ (ignored by git).

RESTATE_SERVER_VERSION := 1.7.12
TOOLS                  := .tools
RESTATE_SERVER         := $(TOOLS)/restate/node_modules/.bin/restate-server
CARGO                  ?= cargo
FANOUT                 := target/debug/fanout

# Demo knobs: MODE=lambda|http, TASK="a,b,c", MAX_SUBTASK_MS=5000 (the reference's bound).
MODE           ?= lambda
TASK           ?= get out of bed,shower,make coffee,have breakfast
MAX_SUBTASK_MS ?= 5000

.PHONY: help tools build-local demo local test lint fmt clean distclean

help:
	@echo "make demo    - run the reference fan-out end to end (restate-server + local Lambda), then stop"
	@echo "make test    - install what is missing, build, run every test"
	@echo "make local   - the local stack until Ctrl-C (MODE=lambda|http)"
	@echo "make tools   - install restate-server $(RESTATE_SERVER_VERSION) into $(TOOLS)/"
	@echo "make lint    - cargo fmt --check and clippy"
	@echo "make clean   - remove local state (.fanout/); distclean also removes $(TOOLS)/ and target/"

tools: $(RESTATE_SERVER)

# Pinned from the npm registry; skipped when already there.
$(RESTATE_SERVER):
	mkdir -p $(TOOLS)/restate
	npm install --prefix $(TOOLS)/restate --no-audit --no-fund --loglevel=error \
		@restatedev/restate-server@$(RESTATE_SERVER_VERSION)
	@$(RESTATE_SERVER) --version

build-local:
	$(CARGO) build --workspace --bins

demo: tools build-local
	$(FANOUT) demo --mode $(MODE) --max-subtask-ms $(MAX_SUBTASK_MS) "$(TASK)"

local: tools build-local
	$(FANOUT) local --mode $(MODE) --max-subtask-ms $(MAX_SUBTASK_MS)

test: tools build-local
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	rm -rf .fanout

distclean: clean
	rm -rf $(TOOLS) target
