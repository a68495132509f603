# Shared by scripts/up, scripts/down and scripts/test: install what is missing and start the servers
# spot-scheduler needs on this host (Redis, RabbitMQ with its management UI, a Docker engine).
# Each function is idempotent: what already runs is left alone.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${SPOT_STATE_DIR:-/tmp/spot-scheduler}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/spot-scheduler-target}"
mkdir -p "$STATE_DIR"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

log() { printf '[spot] %s\n' "$*" >&2; }

# wait_for DESCRIPTION SECONDS COMMAND...: retries COMMAND every half second until it succeeds.
wait_for() {
    local what="$1" limit="$2"; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "gave up waiting for $what after ${limit}s"
            return 1
        fi
        sleep 0.5
    done
}

# apt_install PACKAGE...: installs Debian packages (one `apt-get update` first).
apt_install() {
    log "installing $*"
    $SUDO apt-get update -q >/dev/null
    # policy-rc.d may forbid starting services at install time; we start them ourselves.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

# What the stack needs to build and run: nothing more, so that a fresh `scripts/up` is quick.
ensure_packages() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v curl >/dev/null || missing+=(curl)
    # jemalloc (the services' allocator) builds from C with make.
    command -v make >/dev/null || missing+=(make)
    if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# What only the tests, the chaos scenarios and the benchmarks use (scripts/test, scripts/chaos,
# scripts/bench call it; scripts/up does not).
ensure_test_packages() {
    local missing=()
    # The tests build their image from Debian's static busybox.
    dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
    # The dashboard's browser tests (tests/dashboard.rs) drive a headless Chromium over WebDriver.
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
    # moto's EC2 server plays AWS in the tests.
    if ! command -v moto_server >/dev/null; then
        log "installing moto[server]"
        python3 -m pip install -q 'moto[server]'
        hash -r
    fi
    # schemathesis fuzzes the api from its OpenAPI document (tests/fuzz.rs).
    if ! command -v st >/dev/null; then
        log "installing schemathesis"
        python3 -m pip install -q 'schemathesis>=4,<5'
        hash -r
    fi
}

# The packages the stack runs: the services, the agent and spotctl. Every script builds them with
# this one selection, and the workspace-hack crate gives it the same features as `--workspace`, so a
# release build made by one script (up, compose-smoke, bench) serves the others.
STACK_PACKAGES=(-p spot-api -p spot-provisioner -p spot-reaper -p spot-agent -p spotctl)

# build_stack release|debug [cargo flags...]
build_stack() {
    local profile="$1"; shift
    if [ "$profile" = release ]; then
        cargo build --release "${STACK_PACKAGES[@]}" "$@"
    else
        cargo build "${STACK_PACKAGES[@]}" "$@"
    fi
}

start_redis() {
    if redis-cli -p 6379 ping 2>/dev/null | grep -q PONG; then return; fi
    log "starting Redis"
    # Durability from the append-only file (fsync every second). No RDB snapshots on top: under a
    # steady write load each forks and compresses the whole dataset every minute, a core's worth.
    redis-server --daemonize yes --port 6379 --bind 127.0.0.1 --dir "$STATE_DIR" \
        --pidfile "$STATE_DIR/redis.pid" --logfile "$STATE_DIR/redis.log" --appendonly yes --save ""
    touch "$STATE_DIR/started-redis"
    wait_for Redis 30 redis-cli -p 6379 ping
}

start_rabbitmq() {
    if $SUDO rabbitmqctl -q status >/dev/null 2>&1; then
        $SUDO rabbitmq-plugins enable rabbitmq_management >/dev/null
    else
        $SUDO rabbitmq-plugins enable --offline rabbitmq_management >/dev/null
        log "starting RabbitMQ"
        ( $SUDO rabbitmq-server >"$STATE_DIR/rabbitmq.log" 2>&1 & )
        touch "$STATE_DIR/started-rabbitmq"
        wait_for RabbitMQ 120 $SUDO rabbitmqctl -q status
    fi
    $SUDO rabbitmqctl -q await_startup >/dev/null
    wait_for "the RabbitMQ management API" 60 curl -sf -u guest:guest http://127.0.0.1:15672/api/overview
}

start_dockerd() {
    if docker info >/dev/null 2>&1 || $SUDO docker info >/dev/null 2>&1; then return; fi
    log "starting dockerd"
    ( $SUDO dockerd >"$STATE_DIR/dockerd.log" 2>&1 & )
    touch "$STATE_DIR/started-dockerd"
    wait_for dockerd 60 $SUDO docker info
}

start_dependencies() {
    ensure_packages
    start_redis
    start_rabbitmq
    start_dockerd
}
