#!/usr/bin/env bash
# Installs what a step needs when it is missing (Debian's packages; run as root or via sudo).
#   build: a C compiler, pkg-config, libffi-dev, libsqlite3-dev
#   test:  curl, Debian's python3 with pytest (the unprivileged test user cannot reach a
#          python under /root), nginx and openssl (the deployment tests), patchelf and
#          pkg-config (make install), and, as root, the unprivileged user srv-test that
#          Tests/integration/run.sh runs the suite as
#   install: patchelf and pkg-config (make install)
#   bench: nginx-light, kore, gunicorn, uwsgi with python3, wrk
set -euo pipefail
step=${1:-build}
need=()
has_pc() { pkg-config --exists "$1" 2>/dev/null; }
case "$step" in
  build)
    command -v cc >/dev/null || need+=(gcc)
    command -v pkg-config >/dev/null || need+=(pkg-config)
    has_pc libffi || need+=(libffi-dev)
    has_pc sqlite3 || need+=(libsqlite3-dev)
    ;;
  test)
    command -v curl >/dev/null || need+=(curl)
    command -v pgrep >/dev/null || need+=(procps)
    /usr/bin/python3 -c 'import pytest' 2>/dev/null || need+=(python3-pytest)
    command -v nginx >/dev/null || need+=(nginx-light)
    command -v openssl >/dev/null || need+=(openssl)
    command -v patchelf >/dev/null || need+=(patchelf)
    command -v pkg-config >/dev/null || need+=(pkg-config)
    ;;
  install)
    command -v patchelf >/dev/null || need+=(patchelf)
    command -v pkg-config >/dev/null || need+=(pkg-config)
    ;;
  bench)
    command -v nginx >/dev/null || need+=(nginx-light)
    command -v kore >/dev/null || need+=(kore)
    command -v gunicorn >/dev/null || need+=(gunicorn)
    command -v uwsgi >/dev/null || need+=(uwsgi-core uwsgi-plugin-python3)
    command -v wrk >/dev/null || need+=(wrk)
    command -v curl >/dev/null || need+=(curl)
    ;;
esac
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ "$step" = test ] && [ "$(id -u)" -eq 0 ] && ! id -u "${SRV_TEST_USER:-srv-test}" >/dev/null 2>&1; then
  echo "creating the unprivileged test user ${SRV_TEST_USER:-srv-test}"
  useradd --system --no-create-home --shell /usr/sbin/nologin "${SRV_TEST_USER:-srv-test}"
fi
