#!/usr/bin/env bash
# A real Spark standalone cluster on this machine's loopback: one master and two workers (1 core, 3g each), each
# its own JVM, started from the pyspark distribution in the venv. Jobs go to it with deploy/submit-standalone.sh.
#
#   deploy/local-cluster.sh start     start it (a no-op if it is already running) and wait for both workers
#   deploy/local-cluster.sh status    master URL and each process; exits 3 if not (fully) running
#   deploy/local-cluster.sh stop      stop exactly the JVMs that start started (pid files in the state dir)
#   deploy/local-cluster.sh prune     drop what finished applications unpacked (their logs stay)
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"

usage() {
    cat <<USAGE
usage: deploy/local-cluster.sh start|stop|status|prune

A Spark standalone master and $WORKERS workers ($WORKER_CORES core, $WORKER_MEMORY each) on 127.0.0.1, from the
pyspark distribution of the venv. Pid files, logs, work dirs and master-url live in the state dir.

Environment:
  SKYCLASS_CLUSTER_DIR         state dir (default .cluster of the checkout)
  SKYCLASS_VENV                venv whose pyspark runs the daemons (default .venv of the checkout)
  SKYCLASS_MASTER_PORT         master RPC port (default: a free one)
  SKYCLASS_MASTER_WEBUI_PORT   master web UI port (default: a free one)
  SKYCLASS_WORKER_PORTS        comma-separated RPC ports of the workers (default: free ones)
  SKYCLASS_WORKER_WEBUI_PORTS  comma-separated web UI ports of the workers (default: free ones)
  SKYCLASS_WORKER_MEMORY       memory each worker offers executors (default 3g)
  SKYCLASS_CLUSTER_TIMEOUT_S   how long start waits for the workers to be ALIVE (default 120)
  SKYCLASS_WORKER_CLEANUP_TTL_S  finished applications' work folders are deleted after this (default 3600)
USAGE
}

STATE_DIR="${SKYCLASS_CLUSTER_DIR:-$REPO_DIR/.cluster}"
VENV="${SKYCLASS_VENV:-$REPO_DIR/.venv}"
WORKERS=2
WORKER_CORES=1
WORKER_MEMORY="${SKYCLASS_WORKER_MEMORY:-3g}"
TIMEOUT_S="${SKYCLASS_CLUSTER_TIMEOUT_S:-120}"
HOST=127.0.0.1
MASTER_CLASS=org.apache.spark.deploy.master.Master
WORKER_CLASS=org.apache.spark.deploy.worker.Worker

die() {
    echo "deploy/local-cluster.sh: $*" >&2
    exit 2
}

helper_python() {
    if [[ -x "$VENV/bin/python" ]]; then
        echo "$VENV/bin/python"
    elif command -v python3 >/dev/null 2>&1; then
        command -v python3
    else
        die "no Python found (neither $VENV/bin/python nor python3 on PATH)"
    fi
}

# "name class" for every process of the cluster, master first.
processes() {
    echo "master $MASTER_CLASS"
    local n
    for ((n = 1; n <= WORKERS; n++)); do
        echo "worker-$n $WORKER_CLASS"
    done
}

# True if pid is alive and is the JVM (or the spark-class script about to exec it) that we started for this
# state dir: its command line names the daemon's class and this state dir. A pid reused by any other process
# fails this test, so it is never reported as ours nor killed.
is_ours() {
    local pid="$1" class="$2" cmdline
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *"$class"* && "$cmdline" == *"$STATE_DIR/"* ]]
}

pid_of() {
    local file="$STATE_DIR/$1.pid"
    [[ -f "$file" ]] && cat "$file" || true
}

master_json() {
    local webui="$1"
    "$PY" - "$webui" <<'PY'
import json, sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/json/", timeout=2) as resp:
        data = json.load(resp)
except Exception:
    sys.exit(1)
alive = sum(1 for w in data.get("workers", []) if w.get("state") == "ALIVE")
print(data.get("url", ""), alive)
PY
}

# ---------------------------------------------------------------------------------------------------------------
cmd_status() {
    local name class pid running=0 total=0
    if [[ -f "$STATE_DIR/master-url" ]]; then
        echo "master URL: $(cat "$STATE_DIR/master-url")"
    else
        echo "master URL: none (no cluster started from $STATE_DIR)"
    fi
    while read -r name class; do
        total=$((total + 1))
        pid="$(pid_of "$name")"
        if [[ -z "$pid" ]]; then
            echo "$name: not started"
        elif is_ours "$pid" "$class"; then
            echo "$name: pid $pid alive (log $STATE_DIR/$name.log)"
            running=$((running + 1))
        else
            echo "$name: pid $pid dead (log $STATE_DIR/$name.log)"
        fi
    done < <(processes)
    if [[ -f "$STATE_DIR/master-webui-port" && $running -gt 0 ]]; then
        local answer
        if answer="$(master_json "$(cat "$STATE_DIR/master-webui-port")")"; then
            echo "workers ALIVE at the master: ${answer##* }"
        fi
    fi
    [[ $running -eq $total ]] || return 3
}

# Stop every process whose pid file names a JVM of ours; leave anything else alone.
cmd_stop() {
    local name class pid ours=() waited
    if [[ ! -d "$STATE_DIR" ]] || ! compgen -G "$STATE_DIR/*.pid" >/dev/null; then
        echo "no cluster to stop in $STATE_DIR"
        return 0
    fi
    # Workers first, so the master does not log them as lost; each worker kills its executors on the way out.
    while read -r name class; do
        pid="$(pid_of "$name")"
        [[ -z "$pid" ]] && continue
        if is_ours "$pid" "$class"; then
            kill -TERM "$pid" 2>/dev/null || true
            ours+=("$pid:$class:$name")
        else
            echo "$name: pid $pid is not running as our $class any more; nothing to stop"
        fi
    done < <(processes | tac)
    local deadline=$((SECONDS + 30)) entry left
    while :; do
        left=()
        for entry in "${ours[@]}"; do
            IFS=: read -r pid class name <<<"$entry"
            is_ours "$pid" "$class" && left+=("$entry")
        done
        [[ ${#left[@]} -eq 0 ]] && break
        if ((SECONDS >= deadline)); then
            for entry in "${left[@]}"; do
                IFS=: read -r pid class name <<<"$entry"
                echo "$name: pid $pid did not stop within 30 s of SIGTERM; sending SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            done
            sleep 1
            deadline=$((SECONDS + 10))
            continue
        fi
        sleep 0.3
    done
    for entry in "${ours[@]}"; do
        IFS=: read -r pid class name <<<"$entry"
        echo "$name: pid $pid stopped"
    done
    rm -f "$STATE_DIR"/*.pid "$STATE_DIR/master-url" "$STATE_DIR/master-webui-port"
    cmd_prune
    echo "cluster in $STATE_DIR stopped"
}

# Drop what finished applications' executors unpacked under the workers' work dirs (~1.5 GB each: the shipped
# environment), keeping their stdout/stderr. An executor still running (some process's working directory is its
# folder) is left alone, so this is safe while the cluster runs.
cmd_prune() {
    local executor_dir entry proc running=""
    for proc in /proc/[0-9]*; do
        running+="$(readlink "$proc/cwd" 2>/dev/null || true)"$'\n'
    done
    for executor_dir in "$STATE_DIR"/worker-*/work/app-*/*/; do
        [[ -d "$executor_dir" ]] || continue
        if grep -qxF -- "${executor_dir%/}" <<<"$running"; then
            continue
        fi
        for entry in "$executor_dir"* "$executor_dir".[!.]*; do
            [[ -e "$entry" || -L "$entry" ]] || continue
            case "${entry##*/}" in stdout | stderr) ;; *) rm -rf -- "$entry" ;; esac
        done
    done
}

# Free loopback ports, or the ones asked for after checking that nothing holds them.
pick_ports() {
    "$PY" - "$@" <<'PY'
import socket, sys
# argv: label=port-or-empty ...; prints one port per label, in order
held, out = [], []
for item in sys.argv[1:]:
    label, _, wanted = item.partition("=")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", int(wanted) if wanted else 0))
    except OSError as err:
        print(f"port {wanted} on 127.0.0.1 ({label}) is already in use ({err.strerror}); "
              f"free it or ask for another one", file=sys.stderr)
        sys.exit(1)
    except ValueError:
        print(f"{label}={wanted!r} is not a port number", file=sys.stderr)
        sys.exit(1)
    held.append(sock)  # kept bound until all are picked, so no two labels get the same port
    out.append(str(sock.getsockname()[1]))
print(" ".join(out))
PY
}

start_daemon() {
    # $1 name, then the spark-class arguments
    local name="$1"
    shift
    # setsid: the daemons outlive this script and a Ctrl-C in the terminal that started them.
    setsid "$SPARK_HOME/bin/spark-class" "$@" >"$STATE_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE_DIR/$name.pid"
}

fail_start() {
    local message="$1" log="$2"
    echo "deploy/local-cluster.sh: $message" >&2
    if [[ -f "$log" ]]; then
        echo "--- last lines of $log:" >&2
        tail -n 15 "$log" >&2
    fi
    echo "--- stopping what was started" >&2
    cmd_stop >&2 || true
    exit 1
}

cmd_start() {
    local name class pid alive=0 started=0
    mkdir -p "$STATE_DIR"
    STATE_DIR="$(cd "$STATE_DIR" && pwd)"
    while read -r name class; do
        pid="$(pid_of "$name")"
        [[ -z "$pid" ]] && continue
        started=$((started + 1))
        is_ours "$pid" "$class" && alive=$((alive + 1))
    done < <(processes)
    if [[ $alive -eq $((WORKERS + 1)) && -f "$STATE_DIR/master-url" ]]; then
        echo "already running (nothing started): $(cat "$STATE_DIR/master-url")"
        return 0
    fi
    if [[ $started -gt 0 ]]; then
        echo "a previous cluster in $STATE_DIR is partly gone ($alive of $((WORKERS + 1)) alive); stopping its rest"
        cmd_stop
    fi

    if [[ -n "${JAVA_HOME:-}" ]]; then
        [[ -x "$JAVA_HOME/bin/java" ]] || die "JAVA_HOME=$JAVA_HOME has no bin/java; install Java 17 or fix JAVA_HOME"
    elif ! command -v java >/dev/null 2>&1; then
        die "java not found on PATH and JAVA_HOME is not set; Spark needs Java 17" \
            "(apt-get install openjdk-17-jre-headless), then run start again"
    fi
    SPARK_HOME="$VENV/lib/python3.11/site-packages/pyspark"
    [[ -x "$SPARK_HOME/bin/spark-class" ]] ||
        die "no pyspark distribution at $SPARK_HOME; run make setup (or set SKYCLASS_VENV to the venv)"
    export SPARK_HOME

    local worker_ports worker_webui args=() n
    IFS=, read -r -a worker_ports <<<"${SKYCLASS_WORKER_PORTS:-}"
    IFS=, read -r -a worker_webui <<<"${SKYCLASS_WORKER_WEBUI_PORTS:-}"
    args=("SKYCLASS_MASTER_PORT=${SKYCLASS_MASTER_PORT:-}" "SKYCLASS_MASTER_WEBUI_PORT=${SKYCLASS_MASTER_WEBUI_PORT:-}")
    for ((n = 1; n <= WORKERS; n++)); do
        args+=("worker-$n port, SKYCLASS_WORKER_PORTS=${worker_ports[n - 1]:-}"
               "worker-$n web UI port, SKYCLASS_WORKER_WEBUI_PORTS=${worker_webui[n - 1]:-}")
    done
    local ports
    ports="$(pick_ports "${args[@]}")" || exit 2
    read -r -a ports <<<"$ports"
    local master_port="${ports[0]}" master_webui="${ports[1]}"

    # The daemons' environment: loopback only, our own (empty) conf dir, and no Python of ours: executors must
    # take their Python from what the application ships (spark.pyspark.python), not from the worker.
    mkdir -p "$STATE_DIR/conf"
    : >"$STATE_DIR/conf/master.properties"
    local path_clean
    path_clean="$(tr ':' '\n' <<<"$PATH" | grep -vxF "$VENV/bin" | paste -sd: -)"
    unset PYSPARK_PYTHON PYSPARK_DRIVER_PYTHON PYTHONPATH PYTHONHOME VIRTUAL_ENV SPARK_MASTER_URL
    export PATH="$path_clean" SPARK_LOCAL_IP="$HOST" SPARK_CONF_DIR="$STATE_DIR/conf" SPARK_DAEMON_MEMORY=512m
    # No port hopping: a daemon must bind the port we wrote down, or fail (in its log) if someone took it.
    export SPARK_DAEMON_JAVA_OPTS="-Dspark.port.maxRetries=0"
    # Every application unpacks its environment archive (~1.5 GB) into each executor's work dir: let the workers
    # delete the folders of finished applications after SKYCLASS_WORKER_CLEANUP_TTL_S (default 1 hour).
    SPARK_WORKER_OPTS="-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.interval=300"
    export SPARK_WORKER_OPTS="$SPARK_WORKER_OPTS -Dspark.worker.cleanup.appDataTtl=${SKYCLASS_WORKER_CLEANUP_TTL_S:-3600}"
    rm -f "$STATE_DIR/master-url" "$STATE_DIR/master-webui-port"

    (
        export SPARK_LOCAL_DIRS="$STATE_DIR/master/local"
        mkdir -p "$SPARK_LOCAL_DIRS"
        # --properties-file names the state dir on the master's command line (see is_ours).
        start_daemon master "$MASTER_CLASS" --host "$HOST" --port "$master_port" --webui-port "$master_webui" \
            --properties-file "$STATE_DIR/conf/master.properties"
    )
    echo "$master_webui" >"$STATE_DIR/master-webui-port"
    local url="spark://$HOST:$master_port"
    for ((n = 1; n <= WORKERS; n++)); do
        (
            export SPARK_WORKER_DIR="$STATE_DIR/worker-$n/work" SPARK_LOCAL_DIRS="$STATE_DIR/worker-$n/local"
            mkdir -p "$SPARK_WORKER_DIR" "$SPARK_LOCAL_DIRS"
            start_daemon "worker-$n" "$WORKER_CLASS" --host "$HOST" --port "${ports[2 * n]}" \
                --webui-port "${ports[2 * n + 1]}" --cores "$WORKER_CORES" --memory "$WORKER_MEMORY" \
                --work-dir "$SPARK_WORKER_DIR" "$url"
        )
    done

    echo "waiting up to ${TIMEOUT_S}s for the master ($url, web UI http://$HOST:$master_webui) and $WORKERS workers"
    local t0=$SECONDS answer="" alive_workers=0
    while :; do
        while read -r name class; do
            pid="$(pid_of "$name")"
            is_ours "$pid" "$class" || fail_start "$name (pid $pid) exited during start-up" "$STATE_DIR/$name.log"
        done < <(processes)
        if answer="$(master_json "$master_webui")"; then
            alive_workers="${answer##* }"
            [[ "$alive_workers" -ge $WORKERS ]] && break
        fi
        if ((SECONDS - t0 >= TIMEOUT_S)); then
            fail_start "the master reports $alive_workers of $WORKERS workers ALIVE after ${TIMEOUT_S}s" \
                "$STATE_DIR/master.log"
        fi
        sleep 0.5
    done
    url="${answer% *}"
    echo "$url" >"$STATE_DIR/master-url"
    echo "cluster up in $((SECONDS - t0))s: $url ($WORKERS workers ALIVE; state, logs and pid files in $STATE_DIR)"
}

ACTION="${1:-}"
case "$ACTION" in
    start) PY="$(helper_python)"; cmd_start ;;
    stop) STATE_DIR="$(cd "$STATE_DIR" 2>/dev/null && pwd || echo "$STATE_DIR")"; cmd_stop ;;
    status) PY="$(helper_python)"; STATE_DIR="$(cd "$STATE_DIR" 2>/dev/null && pwd || echo "$STATE_DIR")"; cmd_status ;;
    prune) STATE_DIR="$(cd "$STATE_DIR" 2>/dev/null && pwd || echo "$STATE_DIR")"; cmd_prune ;;
    -h | --help) usage ;;
    *) usage >&2; exit 2 ;;
esac; exit $?
