# Shared by scripts/test and scripts/demo: a virtualenv with the project, and local services.
# Every service is checked on 127.0.0.1; one that does not answer is started (installed from
# Debian's packages first if missing); one that still does not answer stops the script loudly.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

die() { echo "ERROR: $*" >&2; exit 1; }
note() { echo "==> $*" >&2; }

ensure_venv() {
  local stamp="$VENV/.installed" want
  want="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
  if [ ! -x "$PY" ]; then
    note "creating virtualenv in .venv"
    python3 -m venv "$VENV" || die "python3 -m venv failed (install python3-venv)"
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    note "installing celery_reliable and its test dependencies"
    "$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    "$PY" -m pip install -e "$ROOT[dev,postgres,mysql,flower]" > "$VENV/pip.log" 2>&1 \
      || { tail -40 "$VENV/pip.log" >&2; die "pip install failed (full log: .venv/pip.log)"; }
    echo "$want" > "$stamp"
  fi
}

_apt_install() {
  note "installing $* from Debian's packages"
  if [ -z "${_APT_UPDATED:-}" ]; then apt-get update -qq >/dev/null || true; _APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
}

_port_open() { "$PY" - "$1" <<'PYEOF'
import socket, sys
s = socket.socket(); s.settimeout(1)
try:
    s.connect(("127.0.0.1", int(sys.argv[1]))); print("open")
except OSError:
    pass
PYEOF
}

_wait_port() {  # port, name, seconds
  local i
  for i in $(seq 1 "$3"); do
    [ -n "$(_port_open "$1")" ] && return 0
    sleep 1
  done
  die "$2 is not answering on 127.0.0.1:$1 after $3 s"
}

ensure_redis() {
  [ -n "$(_port_open 6379)" ] && return 0
  command -v redis-server >/dev/null || _apt_install redis-server
  note "starting Redis on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || die "redis-server did not start"
  _wait_port 6379 Redis 30
}

ensure_postgres() {
  if [ -z "$(_port_open 5432)" ]; then
    command -v pg_ctlcluster >/dev/null || _apt_install postgresql
    note "starting PostgreSQL on 127.0.0.1:5432"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort | tail -1)" main start \
      || die "PostgreSQL did not start"
    _wait_port 5432 PostgreSQL 60
  fi
  if command -v psql >/dev/null && ! psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
    runuser -u postgres -- createdb test 2>/dev/null || true
  fi
}

ensure_rabbitmq() {
  [ -n "$(_port_open 5672)" ] && return 0
  command -v rabbitmq-server >/dev/null || _apt_install rabbitmq-server
  note "starting RabbitMQ on 127.0.0.1:5672"
  rabbitmq-server -detached || die "rabbitmq-server did not start"
  timeout 120 rabbitmqctl await_startup >/dev/null 2>&1 || true
  _wait_port 5672 RabbitMQ 120
}

ensure_mariadb() {
  [ -n "$(_port_open 3306)" ] && return 0
  command -v mariadbd >/dev/null || _apt_install mariadb-server
  note "starting MariaDB on 127.0.0.1:3306"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || die "MariaDB did not start"
  _wait_port 3306 MariaDB 60
}

ensure_chromium() {  # headless browser tests of the Flower page
  if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then return 0; fi
  _apt_install chromium chromium-driver
  command -v chromedriver >/dev/null || die "chromedriver not found after installing chromium-driver"
}
