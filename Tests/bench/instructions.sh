#!/usr/bin/env bash
# User-space instructions per request, srv beside nginx in the same run (callgrind.sh, the
# same client for both), for hello world and for a browser-sized request (11 more headers).
# Callgrind counts do not move with the machine's load, unlike req/s.
# Usage: instructions.sh [REQUESTS]
set -u
here=$(cd "$(dirname "$0")" && pwd)
n=${1:-20000}
. "$here/lib.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed -e 's/^daemon off;/daemon off;\nmaster_process off;/' -e "s|/tmp/peers-nginx|$tmp/nginx|g" \
  "$here/peers/nginx/nginx.conf" > "$tmp/nginx.conf"
count() { # label callgrind.sh arguments...
  local label=$1; shift
  local v; v=$("$here/callgrind.sh" --requests "$n" --out "$tmp/cg-$label" "$@" 2>&1 | awk '/^instructions\/request:/ {print $2}')
  echo "$label ${v:-?}"
}
rows=$(
  count srv-hello -- --app "$plugins/libhello.so" -b 127.0.0.1:18580 -w 1 --log-level warning
  count nginx-hello --addr 127.0.0.1:18081 -- nginx -c "$tmp/nginx.conf"
  count srv-browser "${browser_headers[@]}" -- --app "$plugins/libhello.so" -b 127.0.0.1:18580 -w 1 --log-level warning
  count nginx-browser --addr 127.0.0.1:18081 "${browser_headers[@]}" -- nginx -c "$tmp/nginx.conf"
)
python3 - "$rows" <<'PY'
import sys
v = dict(line.split() for line in sys.argv[1].splitlines())
for kind in ("hello", "browser"):
    s, g = v.get(f"srv-{kind}", "?"), v.get(f"nginx-{kind}", "?")
    ratio = f"{int(s) / int(g):.2f}x nginx" if s.isdigit() and g.isdigit() else "?"
    print(f"{kind:8} srv {s:>7} instructions/request   nginx {g:>7}   srv {ratio}")
PY
