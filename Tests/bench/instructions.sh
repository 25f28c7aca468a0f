#!/usr/bin/env bash
# User-space instructions per request, srv beside nginx in the same run (callgrind.sh, the
# same client for both), for hello world and for a browser-sized request (11 more headers).
# Callgrind counts do not move with the machine's load, unlike req/s.
# Usage: instructions.sh [REQUESTS]
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
n=${1:-20000}
plugins="$root/build/plugins"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed -e 's/^daemon off;/daemon off;\nmaster_process off;/' -e "s|/tmp/peers-nginx|$tmp/nginx|g" \
  "$here/peers/nginx/nginx.conf" > "$tmp/nginx.conf"
browser=(-H "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
         -H "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
         -H "Accept-Language: en-US,en;q=0.5" -H "Accept-Encoding: gzip, deflate, br, zstd"
         -H "Referer: https://example.com/blog/posts/2026/11/hello-world"
         -H "Cookie: session=8f14e45fceea167a5a36dedd4bea2543; theme=dark; _ga=GA1.2.1234567890.1700000000"
         -H "Upgrade-Insecure-Requests: 1" -H "Sec-Fetch-Dest: document" -H "Sec-Fetch-Mode: navigate"
         -H "Sec-Fetch-Site: same-origin" -H "Priority: u=0, i")
count() { # label callgrind.sh arguments...
  local label=$1; shift
  local v; v=$("$here/callgrind.sh" --requests "$n" --out "$tmp/cg-$label" "$@" 2>&1 | awk '/^instructions\/request:/ {print $2}')
  echo "$label ${v:-?}"
}
rows=$(
  count srv-hello -- --app "$plugins/libhello.so" -b 127.0.0.1:18580 -w 1 --log-level warning
  count nginx-hello --addr 127.0.0.1:18081 -- nginx -c "$tmp/nginx.conf"
  count srv-browser "${browser[@]}" -- --app "$plugins/libhello.so" -b 127.0.0.1:18580 -w 1 --log-level warning
  count nginx-browser --addr 127.0.0.1:18081 "${browser[@]}" -- nginx -c "$tmp/nginx.conf"
)
python3 - "$rows" <<'PY'
import sys
v = dict(line.split() for line in sys.argv[1].splitlines())
for kind in ("hello", "browser"):
    s, g = v.get(f"srv-{kind}", "?"), v.get(f"nginx-{kind}", "?")
    ratio = f"{int(s) / int(g):.2f}x nginx" if s.isdigit() and g.isdigit() else "?"
    print(f"{kind:8} srv {s:>7} instructions/request   nginx {g:>7}   srv {ratio}")
PY
