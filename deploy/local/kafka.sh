#!/usr/bin/env bash
# A real Apache Kafka broker (KRaft, combined broker+controller) on this machine's Java 17.
#
#   deploy/local/kafka.sh start|stop|status
#
# The jars come from Maven Central through deploy/local/kafka/pom.xml into a git-ignored
# cache. Idempotent: `start` finds a running broker and returns at once.
# Settings (environment):
#   KAFKA_PORT             client port (default 9092); the controller uses KAFKA_PORT+1
#   KAFKA_STATE_DIR        data, logs and pid file (default <repo>/.cache/kafka-<port>)
#   KAFKA_HEAP             JVM heap (default 512m)
#   KAFKA_BOOTSTRAP_SERVERS  when set, an external broker is used and nothing is started
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
port="${KAFKA_PORT:-9092}"
controller_port="$((port + 1))"
libs="$repo/.cache/kafka/libs"
state="${KAFKA_STATE_DIR:-$repo/.cache/kafka-$port}"
pidfile="$state/kafka.pid"
logfile="$state/kafka.log"

log() { echo "kafka: $*" >&2; }

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

running_pid() {
  [[ -f "$pidfile" ]] || return 1
  local pid
  pid="$(cat "$pidfile")"
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

resolve_jars() {
  if [[ -f "$libs/.complete" ]]; then return; fi
  log "resolving org.apache.kafka:kafka_2.13 from Maven Central into $libs"
  command -v mvn >/dev/null || { apt-get update -q && apt-get install -y -q maven; }
  rm -rf "$libs"
  mvn -q -B -f "$here/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime
  touch "$libs/.complete"
}

write_config() {
  mkdir -p "$state/data"
  cat >"$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$state/data
num.partitions=6
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0
log.retention.hours=168
PROPS
}

java_cmd=(java "-Xms${KAFKA_HEAP:-512m}" "-Xmx${KAFKA_HEAP:-512m}" -XX:+UseG1GC
  "-Dlog4j2.configurationFile=$here/kafka/log4j2.xml" -cp "$libs/*")

start() {
  if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
    log "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS is set: using it, starting nothing"
    return
  fi
  if pid="$(running_pid)"; then
    log "already running (pid $pid) on 127.0.0.1:$port"
    return
  fi
  if answers; then
    log "something already answers on 127.0.0.1:$port; using it"
    return
  fi
  command -v java >/dev/null || { apt-get update -q && apt-get install -y -q openjdk-17-jre-headless; }
  resolve_jars
  write_config
  if [[ ! -f "$state/data/meta.properties" ]]; then
    local cluster_id
    cluster_id="$("${java_cmd[@]}" kafka.tools.StorageTool random-uuid)"
    "${java_cmd[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$state/server.properties" >>"$logfile" 2>&1
  fi
  log "starting broker on 127.0.0.1:$port (state in $state)"
  # setsid: the broker outlives the shell that started it, like a daemon.
  setsid "${java_cmd[@]}" kafka.Kafka "$state/server.properties" >>"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1 240); do
    if grep -q "Kafka Server started" "$logfile" 2>/dev/null && answers; then
      log "ready on 127.0.0.1:$port"
      return
    fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      log "broker exited during start-up; last lines of $logfile:"
      tail -n 30 "$logfile" >&2
      exit 1
    fi
    sleep 0.5
  done
  log "broker did not become ready in 120 s; see $logfile"
  exit 1
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    log "not running"
    rm -f "$pidfile"
    return
  fi
  log "stopping pid $pid"
  kill "$pid"
  for _ in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; log "stopped"; return; }
    sleep 0.5
  done
  log "pid $pid ignored SIGTERM for 60 s; killing"
  kill -9 "$pid" || true
  rm -f "$pidfile"
}

status() {
  if pid="$(running_pid)"; then
    echo "running (pid $pid) on 127.0.0.1:$port"
  else
    echo "not running"
    return 1
  fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
