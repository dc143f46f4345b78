# fanout — the two commands that matter: `make demo` and `make test`.
#
# Prerequisites on the machine: a Rust toolchain (cargo), Node.js with npm, Python 3.
# Everything else is installed by these targets into .tools/ (ignored by git).

RESTATE_SERVER_VERSION := 1.7.12
TOOLS                  := .tools
RESTATE_SERVER         := $(TOOLS)/restate/node_modules/.bin/restate-server
VENV                   := $(TOOLS)/venv
# Pinned from PyPI: cargo-lambda (brings zig for cross-linking), moto (AWS emulator for the
# deploy tests), cfn-lint (checks template.yaml).
PY_TOOLS               := cargo-lambda==1.9.2 'moto[server]==5.2.5' cfn-lint==1.58.0
PY_STAMP               := $(VENV)/.installed-$(shell echo '$(PY_TOOLS)' | cksum | cut -d' ' -f1)
CARGO                  ?= cargo
FANOUT                 := target/debug/fanout

# Demo knobs: MODE=lambda|http, TASK="a,b,c", MAX_SUBTASK_MS=5000 (the reference's bound).
# Deploy knobs: ARCH=arm64|x86_64, FUNCTION=fanout, ROLE=arn:aws:iam::…:role/…, ARN=<version ARN>,
# ADMIN_URL / INGRESS_URL (default: RESTATE_ADMIN_URL / RESTATE_INGRESS_URL, else localhost).
MODE           ?= lambda
TASK           ?= get out of bed,shower,make coffee,have breakfast
MAX_SUBTASK_MS ?= 5000
# Restate nodes for `make local`: 1 server, or a cluster of 3 (see "Beyond one machine").
NODES          ?= 1
# Where `make local` listens: 8080 is Restate's default ports (ingress 8080, admin 9070 with the
# web UI at /ui/, Lambda 9000), which `make invoke` and every fanout verb default to; another
# number moves them all with the ingress (18080: admin 19070); auto takes free ports.
PORTS          ?= 8080
ARCH           ?= arm64
FUNCTION       ?= fanout
ROLE           ?=
ARN            ?=
ADMIN_URL      ?= $(or $(RESTATE_ADMIN_URL),http://localhost:9070)
INGRESS_URL    ?= $(or $(RESTATE_INGRESS_URL),http://localhost:8080)

.PHONY: help tools tools-aws rust-targets build-local lambda-zips build deploy register invoke prune bench bench-batches bench-wide demo local test chaos lint fmt clean distclean

help:
	@echo "make demo    - run the reference fan-out end to end (restate-server + local Lambda), then stop"
	@echo "make test    - install what is missing, build, run every test"
	@echo "make local   - the local stack until Ctrl-C on Restate's ports, ingress 8080 and admin 9070 (UI:"
	@echo "               http://127.0.0.1:9070/ui/), so \`make invoke\` in another shell reaches it"
	@echo "               (MODE=lambda|http, NODES=1|3, PORTS=8080|BASE|auto)"
	@echo "make tools   - install restate-server $(RESTATE_SERVER_VERSION) into $(TOOLS)/"
	@echo "make tools-aws - install cargo-lambda, moto, cfn-lint from PyPI into $(VENV)"
	@echo "make build   - Lambda zip with cargo-lambda (ARCH=arm64|x86_64)"
	@echo "make deploy  - build, deploy FUNCTION as a published version, register it (ROLE=, ADMIN_URL=)"
	@echo "make register ARN=… / make invoke TASK=… / make prune FUNCTION=…"
	@echo "make bench   - the benchmark grid on the local stack: spreads 0-10s/0-1s/tail x N 100/1000/10000"
	@echo "               x caps n, n/5, 1000 x strategies ledger/select-any/in-order, with floors (long)"
	@echo "make bench-batches - N items one per subtask invocation or K at once (BATCH_ITEMS, BATCH_SIZES, BATCH_WORK_MS)"
	@echo "make bench-wide - WIDE_N=100000 items (S3 in, S3 out) through the local Lambda at each batch size in WIDE_BATCHES=1,10,100, against their floor"
	@echo "make chaos   - the randomized fault suite: CHAOS_RUNS=105 seeded runs from CHAOS_SEED=1000 with"
	@echo "               kills, restarts, 429/5xx, lost responses, timeouts; prints a table (long)"
	@echo "make lint    - cargo fmt --check and clippy"
	@echo "make clean   - remove local state (.fanout/); distclean also removes $(TOOLS)/ and target/"

tools: $(RESTATE_SERVER)

tools-aws: $(PY_STAMP)

$(PY_STAMP):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(PY_TOOLS)
	@touch $@

# Pinned from the npm registry; skipped when already there.
$(RESTATE_SERVER):
	mkdir -p $(TOOLS)/restate
	npm install --prefix $(TOOLS)/restate --no-audit --no-fund --loglevel=error \
		@restatedev/restate-server@$(RESTATE_SERVER_VERSION)
	@$(RESTATE_SERVER) --version

build-local:
	$(CARGO) build --workspace --bins

# Both architectures' zips, built by `fanout build` (cargo-lambda): arm64 for AWS, x86_64 for
# the local stand-in's release loop in the tests.
lambda-zips: tools-aws build-local rust-targets
	$(FANOUT) build --arch arm64
	$(FANOUT) build --arch x86_64

build: tools-aws build-local rust-targets
	$(FANOUT) build --arch $(ARCH)

# cargo-lambda cross-compiles with zig but needs the target's standard library.
rust-targets:
	rustup target add aarch64-unknown-linux-gnu x86_64-unknown-linux-gnu

deploy: build
	$(FANOUT) deploy --function-name $(FUNCTION) --arch $(ARCH) $(if $(ROLE),--role $(ROLE)) \
		--register --admin-url $(ADMIN_URL)

register: build-local
	@test -n "$(ARN)" || { echo "usage: make register ARN=arn:aws:lambda:REGION:ACCOUNT:function:NAME:VERSION"; exit 2; }
	$(FANOUT) register --arn $(ARN) --admin-url $(ADMIN_URL)

invoke: build-local
	$(FANOUT) invoke --ingress-url $(INGRESS_URL) --admin-url $(ADMIN_URL) "$(TASK)"

prune: build-local
	$(FANOUT) prune --function-name $(FUNCTION) --admin-url $(ADMIN_URL)

# The stand-in runs inside fanout, on the same cores as everything it measures: a debug build of
# it took about half the machine and doubled the floor (0-1 s, N = 1,000: 7.3-7.8 s against
# 3.8-4.0 s), so the bench builds the CLI in release too.
bench: tools
	$(CARGO) build --release -p fanout-handler -p fanout
	target/release/fanout bench --handler target/release/fanout-handler --sizes 100,1000,10000 \
		--spreads 0-10s,0-1s,tail --caps n,n/5,1000 --strategies ledger,select-any,in-order \
		--json target/bench.json --plot target/bench.svg

# The same N items run one per subtask invocation or K at once (handler/examples/batched_items,
# parallel::run_all): wall, Lambda invocations, billed time and bytes per item.
BATCH_ITEMS ?= 1000
BATCH_SIZES ?= 1,10,50
BATCH_WORK_MS ?= 200
bench-batches: tools build-local
	$(CARGO) build --release -p fanout-handler --example batched_items
	BATCH_ITEMS=$(BATCH_ITEMS) BATCH_SIZES=$(BATCH_SIZES) BATCH_WORK_MS=$(BATCH_WORK_MS) \
		$(CARGO) test -p fanout-tests --test parallel batch_sizes_measured -- --ignored --nocapture

demo: tools build-local
	$(FANOUT) demo --mode $(MODE) --max-subtask-ms $(MAX_SUBTASK_MS) "$(TASK)"

local: tools build-local
	$(FANOUT) local --mode $(MODE) --max-subtask-ms $(MAX_SUBTASK_MS) --nodes $(NODES) --ports $(PORTS)

# Lint first: a warning clippy finds (new lints arrive with the declared rust-version) fails CI
# as a failing test does.
test: tools tools-aws lambda-zips lint
	$(CARGO) test --workspace

# The fault suite's long run (tests/tests/chaos.rs, test chaos_many): CHAOS_RUNS runs drawn from
# the seeds CHAOS_SEED, CHAOS_SEED+1, …; one seed replays one run: CHAOS_SEED=1042 CHAOS_RUNS=1.
# Runs of items through the stand-in (debug build, as the tests), one per batch size in
# WIDE_BATCHES, against the floor of the same N: wall, Lambda invocations and bytes per item,
# coordinator invocations, server RSS.
WIDE_N ?= 100000
WIDE_CAP ?= 1000
WIDE_BATCHES ?= 1,10,100
bench-wide: tools tools-aws build-local
	WIDE_N=$(WIDE_N) WIDE_CAP=$(WIDE_CAP) WIDE_BATCHES=$(WIDE_BATCHES) $(CARGO) test -p fanout-tests --test items_wide \
		wide_run_of_items -- --ignored --nocapture

CHAOS_RUNS ?= 105
CHAOS_SEED ?= 1000
chaos: tools build-local
	CHAOS_RUNS=$(CHAOS_RUNS) CHAOS_SEED=$(CHAOS_SEED) $(CARGO) test -p fanout-tests --test chaos \
		chaos_many -- --ignored --nocapture

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	rm -rf .fanout

distclean: clean
	rm -rf $(TOOLS) target
