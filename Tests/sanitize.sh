#!/usr/bin/env bash
# make test-sanitize: srv under the sanitizers.
#   1. the unit tests, built with AddressSanitizer;
#   2. the whole integration suite against an AddressSanitizer build of srv (release, with
#      the Makefile's flags), as `make test` runs it (run.sh: an unprivileged user, then root);
#   3. the --threads tests (`-k thread`) against a ThreadSanitizer build.
# Every sanitizer report is written to build/sanitize/ (log_path), from whichever process
# found it (the master, a worker, a check child); any report fails the run, and is printed.
# LeakSanitizer is off: srv keeps what it loads for the life of a process on purpose
# (plugins are never unloaded), and workers end with _exit. The sanitizers leave fatal
# signals alone (handle_segv=0 and the like): the suite's plugins crash on purpose, and the
# master must see a worker die of SIGSEGV as it would without a sanitizer. Memory errors
# are still caught where they happen, by the instrumented code. The quarantine of freed
# memory is 16 MB, not 256: the suite checks that a worker streaming 256 MB to a slow client
# grows by less than 100 MB.
# Environment: SWIFT, SWIFTFLAGS, PLUGINS, BLOG_SO (as the Makefile sets them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
swift=${SWIFT:-swift}
read -r -a flags <<<"${SWIFTFLAGS:-}"
reports=$root/build/sanitize
rm -rf "$reports"
mkdir -p "$reports"
chmod 1777 "$reports"   # the integration suite's unprivileged user writes its reports here

status=0
step() { echo; echo "== test-sanitize: $*"; }

step "unit tests, AddressSanitizer"
ASAN_OPTIONS="detect_leaks=0:log_path=$reports/unit-asan" \
  "$swift" test --sanitize=address --scratch-path .build-asan || status=1

step "integration suite, AddressSanitizer build of srv"
"$swift" build -c release --sanitize=address --scratch-path .build-asan --product srv "${flags[@]}"
signals=handle_segv=0:handle_sigbus=0:handle_sigfpe=0:handle_sigill=0:handle_abort=0
ASAN_OPTIONS="detect_leaks=0:$signals:quarantine_size_mb=16:log_path=$reports/asan" SRV_BIN=$root/.build-asan/release/srv \
  Tests/integration/run.sh || status=1

step "--threads tests, ThreadSanitizer build of srv"
"$swift" build -c release --sanitize=thread --scratch-path .build-tsan --product srv "${flags[@]}"
TSAN_OPTIONS="$signals:log_path=$reports/tsan:halt_on_error=0" SRV_BIN=$root/.build-tsan/release/srv \
  PYTEST_ARGS="-k thread" Tests/integration/run.sh || status=1

found=$(find "$reports" -type f | sort)
if [ -n "$found" ]; then
  step "sanitizer reports ($(echo "$found" | wc -l))"
  for f in $found; do echo "--- $f"; head -60 "$f"; done
  status=1
fi
[ "$status" -eq 0 ] && echo "test-sanitize: no sanitizer report, every test passed"
exit "$status"
