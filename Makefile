# srv: build, test, run and benchmark.
#
#   make run     build srv and the blog example, serve it on http://127.0.0.1:8000
#   make test    unit tests (swift test) and integration tests (real binary, plugins, sockets)
#   make bench   hello world beside nginx, kore, gunicorn and uWSGI, measured with wrk
#
# On a fresh machine each target first installs what it needs (`make deps`).

SWIFT        ?= swift
CONFIG       ?= release
BUILD        := .build/$(CONFIG)
SRV          := $(BUILD)/srv
PLUGINS      := build/plugins
PYTEST       ?= python3 -m pytest
# llhttp (NIO's parser) scans header names and values 16 bytes at a time when the C
# compiler may use SSE4.2: 43% fewer of its instructions on a browser-sized request. On
# when the building machine has SSE4.2 (x86-64 server CPUs since 2008); the binary then
# needs it too.
SSE42        := $(shell grep -qw sse4_2 /proc/cpuinfo 2>/dev/null && echo -Xcc -msse4.2)
# Dynamic exclusivity checks cost ~15% of the request path (most of it inside NIO).
SWIFTFLAGS   ?= -Xswiftc -enforce-exclusivity=unchecked $(SSE42)
WORKERS      ?= 3
BIND         ?= 127.0.0.1:8000

.PHONY: all deps build examples test-plugins blog test unit-test integration-test run bench clean

all: build examples

## Installs the system packages the build and the tests need (Debian/Ubuntu, as root).
deps:
	@Tests/deps.sh build

build: deps
	$(SWIFT) build -c $(CONFIG) $(SWIFTFLAGS) --product srv

## The C examples (hello, conformance) and the Swift blog example (libblog.so).
examples: deps
	$(MAKE) -C Examples OUT=$(CURDIR)/$(PLUGINS)

blog: deps
	$(SWIFT) build -c $(CONFIG) $(SWIFTFLAGS) --product blog

## Deliberately broken plugins, one per refusal srv must make.
test-plugins: deps
	$(MAKE) -C Tests/Plugins OUT=$(CURDIR)/$(PLUGINS) all header-check

unit-test: deps
	$(SWIFT) test

integration-test: build blog examples test-plugins
	@Tests/deps.sh test
	SRV_BIN=$(CURDIR)/$(SRV) PLUGINS=$(CURDIR)/$(PLUGINS) BLOG_SO=$(CURDIR)/$(BUILD)/libblog.so \
		$(PYTEST) -q -p no:cacheprovider Tests/integration

test: unit-test integration-test

## Serves the blog example: a Swift plugin with SQLite, several workers.
run: build blog
	@mkdir -p build/blog-data
	@echo "srv: serving Examples/blog at http://$(BIND)/  (Ctrl-C stops; kill -HUP \$$(cat build/srv.pid) reloads)"
	BLOG_DATA_DIR=$(CURDIR)/build/blog-data BLOG_STATIC_DIR=$(CURDIR)/Examples/blog/static \
		$(SRV) --app $(BUILD)/libblog.so -b $(BIND) -w $(WORKERS) --pid build/srv.pid --access-logfile -

bench: build examples
	@Tests/deps.sh bench
	Tests/bench/bench.sh

clean:
	rm -rf .build build
