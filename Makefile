# srv: build, test, run and benchmark.
#
#   make run     build srv and the blog example, serve it on http://127.0.0.1:8000
#   make test    unit tests (swift test) and integration tests (real binary, plugins, sockets)
#   make test-sanitize   the unit tests and the integration suite under AddressSanitizer, the
#                --threads tests under ThreadSanitizer (Tests/sanitize.sh); any report fails
#   make bench   hello world beside nginx, kore, gunicorn and uWSGI, measured with wrk
#   make install     srv, its Swift runtime, the gateway headers, pkg-config file and SDK
#                    into $(DESTDIR)$(PREFIX) (default /usr/local); runs without a toolchain
#   make uninstall   removes exactly what `make install` put there
#
# On a fresh machine each target first installs what it needs (`make deps`).

SWIFT        ?= swift
CONFIG       ?= release
BUILD        := .build/$(CONFIG)
SRV          := $(BUILD)/srv
PLUGINS      := build/plugins
# llhttp (NIO's parser) scans header names and values 16 bytes at a time when the C
# compiler may use SSE4.2: 43% fewer of its instructions on a browser-sized request. On
# when the building machine has SSE4.2 (x86-64 server CPUs since 2008); the binary then
# needs it too.
SSE42        := $(shell grep -qw sse4_2 /proc/cpuinfo 2>/dev/null && echo -Xcc -msse4.2)
# Dynamic exclusivity checks in NIO and the other dependencies cost 27% more instructions per
# hello request (12,947 against 10,159; SrvCore's own go in Package.swift, which has the
# figures). -Xswiftc reaches every module of a release build; SwiftPM has no way to name
# only NIO's. `swift test` (debug) keeps every check.
SWIFTFLAGS   ?= -Xswiftc -enforce-exclusivity=unchecked $(SSE42)
# SwiftPM prints a line per compiled file (3,000 before the first test result); quiet, it
# prints errors only. `make V=1 ...` shows everything.
QUIET        := $(if $(V),,--quiet)
WORKERS      ?= 3
BIND         ?= 127.0.0.1:8000

.PHONY: all deps build examples test-plugins blog test unit-test integration-test test-sanitize run bench clean \
        install uninstall

all: build examples

## Installs the system packages the build and the tests need (Debian/Ubuntu, as root).
deps:
	@Tests/deps.sh build

build: deps
	$(SWIFT) build $(QUIET) -c $(CONFIG) $(SWIFTFLAGS) --product srv

## The C examples (hello, conformance) and the Swift blog example (libblog.so).
examples: deps
	$(MAKE) -C Examples OUT=$(CURDIR)/$(PLUGINS)

blog: deps
	$(SWIFT) build $(QUIET) -c $(CONFIG) $(SWIFTFLAGS) --product blog

## Deliberately broken plugins, one per refusal srv must make.
test-plugins: deps
	$(MAKE) -C Tests/Plugins OUT=$(CURDIR)/$(PLUGINS) all header-check

unit-test: deps
	$(SWIFT) test $(QUIET)

integration-test: build blog examples test-plugins
	@Tests/deps.sh test
	SRV_BIN=$(CURDIR)/$(SRV) PLUGINS=$(CURDIR)/$(PLUGINS) BLOG_SO=$(CURDIR)/$(BUILD)/libblog.so \
		Tests/integration/run.sh

test: unit-test integration-test

test-sanitize: blog examples test-plugins
	@Tests/deps.sh test
	SWIFT=$(SWIFT) SWIFTFLAGS="$(SWIFTFLAGS)" PLUGINS=$(CURDIR)/$(PLUGINS) BLOG_SO=$(CURDIR)/$(BUILD)/libblog.so \
		Tests/sanitize.sh

## Serves the blog example: a Swift plugin with SQLite, several workers.
run: build blog
	@mkdir -p build/blog-data
	@echo "srv: serving Examples/blog at http://$(BIND)/  (Ctrl-C stops; kill -HUP \$$(cat build/srv.pid) reloads)"
	@# exec: srv takes the shell's place, so the TERM make passes on when it is killed
	@# (`kill PID` of a `make run &`) reaches srv instead of leaving it running.
	BLOG_DATA_DIR=$(CURDIR)/build/blog-data BLOG_STATIC_DIR=$(CURDIR)/Examples/blog/static \
		exec $(SRV) --app $(BUILD)/libblog.so -b $(BIND) -w $(WORKERS) --pid build/srv.pid --access-logfile -

bench: build examples
	@Tests/deps.sh bench
	Tests/bench/bench.sh

clean:
	rm -rf .build build

## make install: srv and the Swift runtime it runs on, for a machine without a toolchain.
#
# srv ships the Swift runtime libraries it links beside itself, in $(PREFIX)/lib/srv/swift/,
# and its RUNPATH is $ORIGIN/../lib/srv/swift (set with patchelf), instead of linking the
# static stdlib. A Swift plugin (a .so built by the same toolchain) needs libswiftCore.so
# & co. when it is loaded; srv has already loaded them by soname, so the dynamic linker
# reuses srv's copies: srv and every Swift plugin share one Swift runtime, the very version
# srv checks the plugin's toolchain stamp against. With -static-stdlib srv would carry a
# private runtime and a Swift plugin would still need a second, dynamic copy of it on the
# machine: two runtimes in one process.
#
#   make install                          # into /usr/local (as root)
#   make install PREFIX=/usr DESTDIR=/tmp/pkg
#   make install INSTALL_DEPS= SRV_INSTALL_BIN=/path/to/srv   # an already built srv, no build
PREFIX          ?= /usr/local
DESTDIR         ?=
# What install builds first; empty installs SRV_INSTALL_BIN as it is (the install test
# does that as an unprivileged user, who must not rebuild into .build).
INSTALL_DEPS    ?= build
SRV_INSTALL_BIN ?= $(SRV)
VERSION         := $(shell sed -n 's/.*serverVersion = "srv\/\([^"]*\)".*/\1/p' Sources/SrvCore/Plugin/GatewayABI.swift)
INSTALL_ROOT     = $(DESTDIR)$(PREFIX)
# Besides what ldd says srv needs, the runtime libraries a Swift plugin of the same
# toolchain commonly needs (Concurrency, Regex, Synchronization, Glibc, Dispatch,
# Foundation, the math shims), whichever the toolchain has. srv itself links
# FoundationEssentials only (Foundation proper loads ICU: 3 ms of CPU at every worker start),
# so the list covers what srv never loads: Foundation, its ICU, FoundationNetworking (needs
# libcurl.so.4) and FoundationXML (libxml2.so.2 from the system).
# srv's RUNPATH does not apply to a plugin's own dependencies: a plugin that needs a library
# srv has not loaded finds it here when linked with -Xlinker -rpath -Xlinker $(PREFIX)/lib/srv/swift.
SWIFT_PLUGIN_RUNTIME := libswift_Concurrency.so libswift_StringProcessing.so libswift_RegexParser.so \
	libswiftSynchronization.so libswiftGlibc.so libFoundation.so libFoundationEssentials.so \
	libFoundationInternationalization.so libFoundationNetworking.so libFoundationXML.so \
	lib_FoundationICU.so libdispatch.so libBlocksRuntime.so libswiftDispatch.so libswiftSwiftOnoneSupport.so \
	libswift_Builtin_float.so libswift_math.so
SRV_HEADERS     := $(notdir $(wildcard PluginSDK/C/include/srv/*.h))
INSTALL_EXAMPLES := systemd nginx

install: $(INSTALL_DEPS)
	@Tests/deps.sh install
	@set -eu; \
	[ -n "$(VERSION)" ] || { echo "make install: no serverVersion in Sources/SrvCore/Plugin/GatewayABI.swift" >&2; exit 1; }; \
	bin='$(SRV_INSTALL_BIN)'; root='$(INSTALL_ROOT)'; rt="$$root/lib/srv/swift"; \
	[ -f "$$bin" ] || { echo "make install: $$bin missing (make build, or SRV_INSTALL_BIN=...)" >&2; exit 1; }; \
	: "the toolchain's runtime directory: where the binary's libswiftCore.so resolves"; \
	core=$$(ldd "$$bin" | awk '$$1 == "libswiftCore.so" && $$3 ~ /^\// { print $$3; exit }'); \
	if [ -n "$$core" ]; then swiftdir=$$(dirname "$$core"); \
	elif command -v $(SWIFT) >/dev/null; then swiftdir=$$(dirname "$$(command -v $(SWIFT))")/../lib/swift/linux; \
	else echo "make install: cannot find the Swift runtime $$bin was built against" >&2; exit 1; fi; \
	[ -f "$$swiftdir/libswiftCore.so" ] || { echo "make install: no libswiftCore.so in $$swiftdir" >&2; exit 1; }; \
	if [ -d "$$rt" ] && [ "$$(cd "$$swiftdir" && pwd -P)" = "$$(cd "$$rt" && pwd -P)" ]; then \
		echo "make install: $$bin already runs on $$rt; install from the build, not from an installed srv" >&2; exit 1; fi; \
	echo "install: Swift runtime from $$swiftdir -> $$rt"; \
	rm -rf "$$rt.new"; install -d "$$rt.new"; \
	extra=""; for n in $(SWIFT_PLUGIN_RUNTIME); do if [ -f "$$swiftdir/$$n" ]; then extra="$$extra $$swiftdir/$$n"; fi; done; \
	for n in $$extra; do install -m 0644 "$$n" "$$rt.new/$$(basename "$$n")"; done; \
	ldd "$$bin" $$extra | awk -v d="$$swiftdir/" '$$2 == "=>" && index($$3, d) == 1 { print $$1, $$3 }' | \
	while read -r name path; do install -m 0644 "$$path" "$$rt.new/$$name"; done; \
	for f in "$$rt.new"/*.so*; do patchelf --set-rpath '$$ORIGIN' "$$f"; done; \
	rm -rf "$$rt.old"; if [ -d "$$rt" ]; then mv "$$rt" "$$rt.old"; fi; mv "$$rt.new" "$$rt"; rm -rf "$$rt.old"; \
	echo "install: $$bin -> $$root/bin/srv (RUNPATH \$$ORIGIN/../lib/srv/swift)"; \
	install -d "$$root/bin"; install -m 0755 "$$bin" "$$root/bin/.srv.new"; \
	patchelf --set-rpath '$$ORIGIN/../lib/srv/swift' "$$root/bin/.srv.new"; \
	mv -f "$$root/bin/.srv.new" "$$root/bin/srv"; \
	install -d "$$root/include/srv" "$$root/lib/pkgconfig" "$$root/share/doc/srv" "$$root/share/srv/examples"; \
	install -m 0644 $(addprefix PluginSDK/C/include/srv/,$(SRV_HEADERS)) "$$root/include/srv/"; \
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' PluginSDK/C/srv-gateway.pc.in > "$$root/lib/pkgconfig/srv-gateway.pc"; \
	chmod 0644 "$$root/lib/pkgconfig/srv-gateway.pc"; \
	rm -rf "$$root/share/srv/PluginSDK"; cp -R PluginSDK "$$root/share/srv/PluginSDK"; \
	rm -rf "$$root/share/srv/PluginSDK/.build" "$$root/share/srv/PluginSDK/.swiftpm"; \
	chmod -R u=rwX,go=rX "$$root/share/srv/PluginSDK"; \
	for d in $(INSTALL_EXAMPLES); do if [ -d "Examples/$$d" ]; then \
		rm -rf "$$root/share/srv/examples/$$d"; cp -R "Examples/$$d" "$$root/share/srv/examples/$$d"; \
		chmod -R u=rwX,go=rX "$$root/share/srv/examples/$$d"; fi; done; \
	install -m 0644 LICENSE README.md CHANGELOG.md "$$root/share/doc/srv/"; \
	echo "install: srv $(VERSION) in $$root (headers, srv-gateway.pc, share/srv/PluginSDK, docs, examples)"; \
	if ! pkg-config --variable pc_path pkg-config | tr : '\n' | grep -qx '$(PREFIX)/lib/pkgconfig'; then \
		echo "install: pkg-config does not look in $(PREFIX)/lib/pkgconfig; before \`pkg-config --cflags srv-gateway\`:"; \
		echo "    export PKG_CONFIG_PATH=$(PREFIX)/lib/pkgconfig"; fi

uninstall:
	rm -f '$(INSTALL_ROOT)/bin/srv' '$(INSTALL_ROOT)/lib/pkgconfig/srv-gateway.pc'
	rm -rf '$(INSTALL_ROOT)/lib/srv/swift' '$(INSTALL_ROOT)/share/srv/PluginSDK'
	rm -rf $(foreach d,$(INSTALL_EXAMPLES),'$(INSTALL_ROOT)/share/srv/examples/$(d)')
	rm -f $(foreach h,$(SRV_HEADERS),'$(INSTALL_ROOT)/include/srv/$(h)')
	rm -f $(foreach f,LICENSE README.md CHANGELOG.md,'$(INSTALL_ROOT)/share/doc/srv/$(f)')
	@# srv's own directories go too once empty; bin, lib/pkgconfig and the like stay.
	@for d in lib/srv share/srv/examples share/srv share/doc/srv include/srv; do \
		rmdir '$(INSTALL_ROOT)'/$$d 2>/dev/null || true; done
