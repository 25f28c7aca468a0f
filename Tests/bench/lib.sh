# Sourced by the bench scripts: starting and stopping the servers they measure.

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
