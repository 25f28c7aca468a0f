#!/usr/bin/env bash
# Runs the integration tests as an operator runs srv: as an ordinary user.
#
# Started by an ordinary user, it runs the suite as that user; the tests marked `root`
# (privilege drop, ports below 1024) are skipped with a message. Started as root (CI), it
# runs the suite as SRV_TEST_USER (default srv-test, created by `Tests/deps.sh test`), then
# the `root` tests as root. When that user cannot read this tree (a clone under /root),
# the tree and its build products are copied to a directory it can read first.
#
# Environment: SRV_BIN, PLUGINS, BLOG_SO (as the Makefile sets them), PYTEST_ARGS (extra
# pytest arguments, for example "-k nginx"), ASAN_OPTIONS and TSAN_OPTIONS (passed to the
# user's tests: make test-sanitize).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
: "${SRV_BIN:=$root/.build/release/srv}" "${PLUGINS:=$root/build/plugins}" "${BLOG_SO:=$root/.build/release/libblog.so}"
pytest=(python3 -m pytest -q -p no:cacheprovider)
extra=(${PYTEST_ARGS:-})

# What the suite may leave in /tmp: nothing. pytest's own directories go under a base
# removed at the end; every name the tests create there is compared at the end.
tmp_before=$(ls -A /tmp | sort)
leftovers() {
  comm -13 <(printf '%s\n' "$tmp_before") <(ls -A /tmp | sort) | grep -E '^(srv|apps-|pytest|tmp|blog|nginx)' || true
}

if [ "$(id -u)" -ne 0 ]; then
  base=$(mktemp -d /tmp/srv-pytest.XXXXXX)
  rc=0
  env SRV_BIN="$SRV_BIN" PLUGINS="$PLUGINS" BLOG_SO="$BLOG_SO" "${pytest[@]}" --basetemp="$base/t" "${extra[@]}" \
    "$root/Tests/integration" || rc=$?
  rm -rf "$base"
  left=$(leftovers)
  if [ -n "$left" ]; then echo "run.sh: the tests left these in /tmp:" $left >&2; [ "$rc" -eq 0 ] && rc=1; fi
  exit "$rc"
fi

user=${SRV_TEST_USER:-srv-test}
if ! id -u "$user" >/dev/null 2>&1; then
  echo "run.sh: running as root, the integration tests run as the unprivileged user '$user', which does not exist." >&2
  echo "        Create it with 'Tests/deps.sh test' (or useradd --system $user), or name another with SRV_TEST_USER." >&2
  exit 1
fi

# The user's PATH: root's, without what only root can enter (pyenv under /root and the like).
user_path=$(printf '%s' "$PATH" | tr ':' '\n' | grep -v '^/root' | paste -sd: -)
user_path="$user_path:/usr/local/bin:/usr/bin:/bin"
can_read() { runuser -u "$user" -- test -r "$1" -a -x "$(dirname "$1")"; }

tree=$root
if ! can_read "$root/Tests/integration/conftest.py" || ! can_read "$SRV_BIN" || ! can_read "$PLUGINS/libhello.so"; then
  tree=$(mktemp -d /tmp/srv-integration.XXXXXX)
  echo "run.sh: '$user' cannot read $root; copying the tree and its build products to $tree"
  (cd "$root" && git ls-files -z 2>/dev/null | xargs -0 cp --parents -t "$tree") || cp -a "$root/." "$tree/"
  mkdir -p "$tree/bin" "$tree/plugins"
  cp -L "$SRV_BIN" "$tree/bin/srv"
  cp -L "$PLUGINS"/*.so "$tree/plugins/"
  [ -f "$BLOG_SO" ] && cp -L "$BLOG_SO" "$tree/plugins/libblog-example.so"
  SRV_BIN=$tree/bin/srv PLUGINS=$tree/plugins BLOG_SO=$tree/plugins/libblog-example.so
  chmod -R a+rX "$tree"
fi
home=$(mktemp -d /tmp/srv-test-home.XXXXXX)
chown "$user" "$home"
root_base=$(mktemp -d /tmp/srv-pytest-root.XXXXXX)

status=0
echo "run.sh: integration tests as the unprivileged user '$user' ($(id -u "$user"))"
# From a directory the user may enter: pytest returns to where it started when it ends.
cd "$tree"
runuser -u "$user" -- env -i PATH="$user_path" HOME="$home" LANG=C.UTF-8 \
  SRV_BIN="$SRV_BIN" PLUGINS="$PLUGINS" BLOG_SO="$BLOG_SO" SRV_TEST_ROOT_PHASE=0 \
  ASAN_OPTIONS="${ASAN_OPTIONS:-}" TSAN_OPTIONS="${TSAN_OPTIONS:-}" \
  "${pytest[@]}" -m "not root" --basetemp="$home/pytest" "${extra[@]}" "$tree/Tests/integration" || status=$?
echo "run.sh: the tests that need root, as root"
rc=0
env SRV_BIN="$SRV_BIN" PLUGINS="$PLUGINS" BLOG_SO="$BLOG_SO" SRV_TEST_UNPRIVILEGED_USER="$user" \
  "${pytest[@]}" -m root --basetemp="$root_base/t" "${extra[@]}" "$tree/Tests/integration" || rc=$?
# pytest exits 5 when no test was selected (none marked root matched a -k filter).
[ "$rc" -eq 5 ] && rc=0
[ "$status" -eq 0 ] && status=$rc
rm -rf "$home" "$root_base"
[ "$tree" != "$root" ] && rm -rf "$tree"
left=$(leftovers)
if [ -n "$left" ]; then
  echo "run.sh: the tests left these in /tmp (each test removes what it makes):" $left >&2
  [ "$status" -eq 0 ] && status=1
fi
exit "$status"
