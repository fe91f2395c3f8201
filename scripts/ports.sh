# Sourced by scripts that start `ferry serve` on loopback ports:
#   require_free_ports WHAT VAR PORT...
# fails, naming each port and what to set, when anything listens there, so
# a script never talks to a stranger's server and reports success.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
require_free_ports() {
    local what=$1 var=$2 busy=() p
    shift 2
    for p in "$@"; do
        if [ "$p" -lt 1 ] || [ "$p" -gt 65535 ]; then
            echo "$what: port $p is not in 1..65535 ($var)" >&2
            exit 1
        fi
        port_in_use "$p" && busy+=("$p")
    done
    if [ ${#busy[@]} -gt 0 ]; then
        echo "$what: 127.0.0.1 port(s) ${busy[*]} already in use; it needs $* free." >&2
        echo "$what: stop what listens there, or choose other ports: $var=PORT (it uses PORT and PORT+1)." >&2
        exit 1
    fi
}
# wait_listening WHAT PID PORT: until the server on PORT accepts (10 s), or fail if PID died
wait_listening() {
    local what=$1 pid=$2 port=$3 i
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { echo "$what: ferry serve on port $port exited (see above)" >&2; exit 1; }
        port_in_use "$port" && return 0
        sleep 0.1
    done
    echo "$what: ferry serve on port $port did not start listening in 10 s" >&2
    exit 1
}
