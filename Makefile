# Thin wrapper around CMake. Every target first makes sure the Debian
# packages it needs are present (`make deps`).
BUILD      ?= build
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
PACKAGES    = cmake gcc pkg-config make libevent-dev libssl-dev libyaml-dev libjansson-dev \
              libnghttp2-dev libzookeeper-mt-dev libpcre2-dev libcrypt-dev apache2-utils \
              check etcd-server etcd-client curl openssl python3 iproute2 \
              procps wrk zookeeper default-jre-headless python3-kazoo
# Tools some tests use (promtool, a real Prometheus scrape, the dashboard in
# headless Chromium); best effort: without them those tests skip.
TEST_PACKAGES  = prometheus chromium haproxy nginx-light iperf3 nghttp2-client python3-h2
BENCH_PACKAGES = haproxy nginx-light libnginx-mod-stream wrk iperf3 valgrind linux-perf
FUZZ_PACKAGES  = clang libclang-rt-14-dev
# gRPC tests (issue 17): a real grpcio server and client, run by /usr/bin/python3.
TEST_PACKAGES += python3-grpcio
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps test-deps apt-optional build test unit asan tsan fuzz soak demo bench clean check-config dashboard-shot

all: build

# Install only what is missing; `apt-get update` once, only when needed.
define apt_install
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

# The same, but a failure only warns (tests that need these skip).
define apt_install_optional
	@$(MAKE) --no-print-directory apt-optional APT_OPTIONAL="$(1)" || \
	  echo "warning: could not install$(1); the tests that need them skip"
endef

deps:
	$(call apt_install,$(PACKAGES))

test-deps:
	$(call apt_install_optional, $(TEST_PACKAGES))

apt-optional:
	$(call apt_install,$(APT_OPTIONAL))

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DWAYGATE_WERROR=ON >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

test: build test-deps
	@WAYGATE_BUILD=$(BUILD) python3 tests/run --build $(BUILD)

asan: deps test-deps
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DWAYGATE_WERROR=ON \
	       -DWAYGATE_SANITIZE=address,undefined >/dev/null
	@cmake --build build-asan -j $(JOBS)
	@WAYGATE_SANITIZED=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	 python3 tests/run --build build-asan

# The reclamation stress test under ThreadSanitizer (DESIGN §3).
tsan: deps
	@cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DWAYGATE_WERROR=ON \
	       -DWAYGATE_SANITIZE=thread >/dev/null
	@cmake --build build-tsan -j $(JOBS) --target check_reclaim
	@TSAN_OPTIONS=halt_on_error=1 ./build-tsan/check_reclaim

# The soak test under faults (tests/integration/test_soak.py; `make test`
# runs it for 60 s): SOAK_SECONDS of wrk load while backends, etcd members
# and configurations fail; SOAK_SEED replays a fault order. Prints its account.
SOAK_SECONDS ?= 600
SOAK_SEED    ?=
soak: build
	@rm -f $(BUILD)/soak-report.txt
	@WAYGATE_SOAK_SECONDS=$(SOAK_SECONDS) WAYGATE_SOAK_SEED=$(SOAK_SEED) \
	 WAYGATE_SOAK_REPORT=$(abspath $(BUILD))/soak-report.txt \
	 python3 tests/run --build $(BUILD) --integration-only --filter test_soak.py \
	   --timeout $$(( $(SOAK_SECONDS) + 600 )); rc=$$?; \
	 cat $(BUILD)/soak-report.txt 2>/dev/null; exit $$rc

FUZZ_SECONDS ?= 60
fuzz: deps
	$(call apt_install,$(FUZZ_PACKAGES))
	@CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DWAYGATE_FUZZ=ON \
	       -DWAYGATE_SANITIZE=address,undefined >/dev/null
	@cmake --build build-fuzz -j $(JOBS)
	@set -e; for f in build-fuzz/fuzz_*; do \
	  name=$$(basename $$f); corpus=tests/fuzz/corpus/$${name#fuzz_}; mkdir -p fuzz-out/$$name; \
	  dict=""; [ -f tests/fuzz/$${name#fuzz_}.dict ] && dict="-dict=tests/fuzz/$${name#fuzz_}.dict"; \
	  echo "== $$name ($(FUZZ_SECONDS)s)"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $$dict fuzz-out/$$name $$corpus 2>&1 | tail -3; \
	done

demo: build
	@./conf/demo.sh $(BUILD)

bench: build
	$(call apt_install,$(BENCH_PACKAGES))
	@./benchmarks/run

# docs/dashboard.png: sample backends, waygate with its admin API, and the
# dashboard screenshotted by headless Chromium once it has polled /status.
dashboard-shot: build
	$(call apt_install,chromium)
	@python3 tests/tools/dashboard_shot.py --build $(BUILD) --out docs/dashboard.png

check-config: build
	@./$(BUILD)/waygate -t -c conf/waygate.yaml

clean:
	rm -rf build build-asan build-tsan build-fuzz fuzz-out
