# shellcheck shell=bash
# Sourced by the other scripts: installs (apt) and starts what Keel runs on, when missing:
# PostgreSQL, Redis and NATS with JetStream, plus curl and jq for the demo. Uses them as
# they are when they already answer. Then sets up Keel's principals (ensure_principals):
# one Redis ACL user and one NATS user per process, each with only what it needs.

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
  # scripts/conformance: schemathesis in a virtualenv of its own.
  command -v python3 >/dev/null || missing+=(python3)
  python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
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

# Keel's principals live in a machine-wide state directory that survives clean clones:
#   secrets.env      the passwords, generated once (mode 600)
#   principals.env   each process's URLs: KEEL_REDIS_URL_<PROCESS>, KEEL_NATS_URL_<PROCESS>
#                    for COMMAND_API, PROJECTORS, RELAY and ADMIN (operators, the test kit)
#   redis-users.acl  the Redis ACL users, one `user NAME rules…` line each (the only place
#                    the Redis rules are written; passwords as SHA-256)
#   nats.conf        the NATS users and their permissions (nats-server.conf adds the
#                    JetStream store of Keel's own server)
# Re-running regenerates the three from the same passwords and applies them: ACL SETUSER
# on the shared Redis (its default user is left as it is), and Keel's own nats-server on
# 127.0.0.1:$KEEL_NATS_PORT (started, or reloaded), beside any other NATS on the machine.
KEEL_STATE=${KEEL_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/keel}
KEEL_NATS_PORT=${KEEL_NATS_PORT:-4223}
KEEL_PRINCIPALS_FILE=$KEEL_STATE/principals.env
KEEL_PROCESSES=(command-api projectors relay)

# The Redis rules after the password: keys, channels, commands. Every user starts from
# nothing (`reset`, `resetchannels`, `-@all`) and none gets a `@dangerous` command.
redis_rules() {
  local base='~keel:* -@all +@connection +@read +@write -@dangerous -@scripting'
  local scripts='+eval +evalsha +script|load +script|exists'
  case $1 in
    admin) echo '~* &* +@all' ;;
    command-api)
      echo "$base $scripts resetchannels &notify.user.* &policy.invalidate.*" \
        '+subscribe +psubscribe +ssubscribe +unsubscribe +punsubscribe +sunsubscribe' ;;
    projectors) echo "$base resetchannels &policy.invalidate.* +publish" ;;
    relay) echo "$base $scripts resetchannels &notify.user.* +publish +spublish" ;;
  esac
}

# The JetStream API subjects a durable consumer's owner needs for consumer $1, and for
# its partitions' consumers $1-0 … $1-63 (KEEL_PARTITIONS is at most 64).
nats_consumer_subjects() {
  local name
  for name in "$1" $(printf "$1-%d " $(seq 0 63)); do
    printf '"$JS.API.CONSUMER.CREATE.*.%s", ' "$name"
    printf '"$JS.API.CONSUMER.CREATE.*.%s.>", ' "$name"
    printf '"$JS.API.CONSUMER.INFO.*.%s", ' "$name"
    printf '"$JS.API.CONSUMER.MSG.NEXT.*.%s", ' "$name"
    printf '"$JS.ACK.*.%s.>", ' "$name"
  done
}

# The NATS permissions of process $1. Event subjects: the demo's `events.>` and the
# tests' and benchmarks' `test.>` (production allows only its own KEEL_SUBJECT_PREFIX).
nats_permissions() {
  local consumer_common='"$JS.API.INFO", "$JS.API.STREAM.INFO.*", "dlq.>"'
  local allow
  case $1 in
    command-api)
      allow='"events.>", "test.>", "$JS.API.STREAM.CREATE.*", "$JS.API.STREAM.UPDATE.*",'
      allow+=' "$JS.API.STREAM.INFO.*", "$JS.API.STREAM.MSG.GET.*"' ;;
    projectors)
      allow=$(for name in users authors posts dashboard; do nats_consumer_subjects "projector-$name"; done)
      allow+="\"\$JS.API.STREAM.MSG.GET.*\", $consumer_common" ;;
    relay)
      allow="$(nats_consumer_subjects relay-notifications)\"\$JS.API.STREAM.MSG.GET.*\", $consumer_common" ;;
  esac
  printf 'permissions: {publish: {allow: [%s]}, subscribe: {allow: ["_INBOX.>"]}}' "$allow"
}

upper() { tr 'a-z-' 'A-Z_' <<<"$1"; }

write_principals() {
  mkdir -p "$KEEL_STATE"
  chmod 700 "$KEEL_STATE"
  local secrets=$KEEL_STATE/secrets.env name var mask
  mask=$(umask)
  umask 077
  touch "$secrets"
  for name in admin "${KEEL_PROCESSES[@]}"; do
    var=KEEL_PASSWORD_$(upper "$name")
    if ! grep -q "^$var=" "$secrets"; then
      echo "$var=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >>"$secrets"
    fi
  done
  # shellcheck disable=SC1090
  source "$secrets"
  local acl=$KEEL_STATE/redis-users.acl nats=$KEEL_STATE/nats.conf env=$KEEL_PRINCIPALS_FILE
  local password digest permissions
  {
    echo "# Generated by scripts/services.sh: each Keel process's URLs (secret)."
    echo "KEEL_REDIS_ACL_FILE=$acl"
    echo "KEEL_NATS_CONF=$nats"
  } >"$env"
  : >"$acl"
  {
    echo "# Generated by scripts/services.sh: Keel's NATS users and permissions (secret)."
    echo "authorization {"
    echo "  users: ["
  } >"$nats"
  for name in admin "${KEEL_PROCESSES[@]}"; do
    var=KEEL_PASSWORD_$(upper "$name")
    password=${!var}
    digest=$(printf '%s' "$password" | sha256sum | cut -d' ' -f1)
    echo "user keel-$name reset on #$digest $(redis_rules "$name")" >>"$acl"
    echo "KEEL_REDIS_URL_$(upper "$name")=redis://keel-$name:$password@127.0.0.1:6379" >>"$env"
    echo "KEEL_NATS_URL_$(upper "$name")=nats://keel-$name:$password@127.0.0.1:$KEEL_NATS_PORT" >>"$env"
    permissions=
    [ "$name" = admin ] || permissions=", $(nats_permissions "$name")"
    echo "    {user: \"keel-$name\", password: \"$password\"$permissions}" >>"$nats"
  done
  printf '  ]\n}\n' >>"$nats"
  # Keel's own server: those users, and its JetStream store here.
  printf 'include "nats.conf"\njetstream {store_dir: "%s"}\n' "$KEEL_STATE/jetstream" \
    >"$KEEL_STATE/nats-server.conf"
  umask "$mask"
}

# ACL SETUSER each line of the ACL file on the shared Redis.
apply_redis_principals() {
  local user name rules
  while read -r user name rules; do
    [ "$user" = user ] || continue
    # shellcheck disable=SC2086 # the rules are words
    redis-cli -h 127.0.0.1 -p 6379 ACL SETUSER "$name" $rules >/dev/null
  done <"$KEEL_STATE/redis-users.acl"
}

# Keel's own nats-server with nats.conf: started, or told to reload it.
ensure_keel_nats() {
  local pid_file=$KEEL_STATE/nats.pid pid
  pid=$(cat "$pid_file" 2>/dev/null || true)
  # The pid file outlives a reboot: signal it only if it still names Keel's nats-server.
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = nats-server ] &&
    port_open 127.0.0.1 "$KEEL_NATS_PORT"; then
    kill -HUP "$pid"
    return
  fi
  rm -f "$pid_file"
  mkdir -p "$KEEL_STATE/jetstream"
  setsid nohup nats-server -c "$KEEL_STATE/nats-server.conf" -a 127.0.0.1 -p "$KEEL_NATS_PORT" \
    -P "$pid_file" -l "$KEEL_STATE/nats.log" >/dev/null 2>&1 &
  wait_until "Keel's NATS (port $KEEL_NATS_PORT)" port_open 127.0.0.1 "$KEEL_NATS_PORT"
}

ensure_principals() {
  write_principals
  apply_redis_principals
  ensure_keel_nats
  export KEEL_PRINCIPALS_FILE
}

ensure_services() {
  ensure_tools
  ensure_postgres
  ensure_redis
  ensure_nats
  ensure_principals
}
