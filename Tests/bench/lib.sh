# Sourced by the bench scripts (after setting $here): what they measure, and starting and
# stopping the servers.
root=$(cd "$here/../.." && pwd)
srv="$root/.build/release/srv"
plugins="$root/build/plugins"

# A browser's request: hello world's plus 11 headers (558 bytes), for wrk and callgrind.sh.
browser_headers=(-H "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
  -H "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
  -H "Accept-Language: en-US,en;q=0.5" -H "Accept-Encoding: gzip, deflate, br, zstd"
  -H "Referer: https://example.com/blog/posts/2026/11/hello-world"
  -H "Cookie: session=8f14e45fceea167a5a36dedd4bea2543; theme=dark; _ga=GA1.2.1234567890.1700000000"
  -H "Upgrade-Insecure-Requests: 1" -H "Sec-Fetch-Dest: document" -H "Sec-Fetch-Mode: navigate"
  -H "Sec-Fetch-Site: same-origin" -H "Priority: u=0, i")

# Waits until something answers HTTP on 127.0.0.1:PORT (10 s at most).
wait_port() { # port
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done
  return 1
}

# Stops a server started in the background and waits until its port is free. $! is not
# always the server: bash may fork a shell that waits for it instead of exec'ing it, and
# TERM to that shell alone leaves the server running, to answer the next round's requests
# in place of the server that round means to measure (seen in mixed.sh). So the children
# of $! get the signal too.
stop_server() { # pid port
  local kids; kids=$(pgrep -P "$1")
  kill "$1" $kids 2>/dev/null; wait "$1" 2>/dev/null
  for _ in $(seq 100); do ss -Hltn "sport = :$2" | grep -q . || return 0; sleep 0.1; done
  echo "port $2 is still in use after stopping $1" >&2
  return 1
}
