# shellcheck shell=bash
# Sourced by the other scripts: installs (apt) and starts what Keel runs on, when missing:
# PostgreSQL, Redis and NATS with JetStream, plus curl and jq for the demo. Uses them as
# they are when they already answer.

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

_apt_updated=
apt_install() {
  if [ -z "$_apt_updated" ]; then
    as_root apt-get update -qq
    _apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# wait_until <what> <command...>: polls for up to 30 s.
wait_until() {
  local what=$1; shift
  for _ in $(seq 1 120); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  echo "error: $what did not come up" >&2
  return 1
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

ensure_tools() {
  local missing=()
  command -v curl >/dev/null || missing+=(curl)
  command -v jq >/dev/null || missing+=(jq)
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
  if ! command -v cargo >/dev/null; then
    echo "error: Keel needs a Rust toolchain (cargo, rustc >= 1.85) on PATH" >&2
    return 1
  fi
}

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    echo "installing PostgreSQL…"
    apt_install postgresql postgresql-client
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_until "PostgreSQL" pg_isready -q -h 127.0.0.1 -p 5432
  fi
  if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
    # A fresh Debian cluster asks for a password on TCP: trust loopback for this dev box.
    local version hba
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    hba=/etc/postgresql/$version/main/pg_hba.conf
    echo "letting user postgres connect from 127.0.0.1 without a password ($hba)"
    as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    wait_until "PostgreSQL (trust auth)" psql -h 127.0.0.1 -U postgres -d postgres -tAc 'SELECT 1'
  fi
}

ensure_redis() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "installing Redis…"
    apt_install redis-server redis-tools
  fi
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
      --appendonly no --dir /var/lib/redis --logfile /var/log/redis/keel.log
    wait_until "Redis" redis-cli -h 127.0.0.1 -p 6379 ping
  fi
}

ensure_nats() {
  if ! command -v nats-server >/dev/null; then
    echo "installing NATS…"
    apt_install nats-server
  fi
  if ! port_open 127.0.0.1 4222; then
    as_root mkdir -p /var/lib/nats-server
    as_root start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- \
      -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    wait_until "NATS" port_open 127.0.0.1 4222
  fi
}

# The browser test (tests/tests/browser.rs) drives headless Chromium.
ensure_chromium() {
  if ! command -v chromium >/dev/null; then
    echo "installing Chromium…"
    apt_install chromium
  fi
}

ensure_services() {
  ensure_tools
  ensure_postgres
  ensure_redis
  ensure_nats
}
