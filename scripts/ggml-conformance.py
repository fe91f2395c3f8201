#!/usr/bin/env python3
"""Runs ggml's own conformance suite (test-backend-ops, test mode) through
ggml's own RPC client against an RPC server, op by op, and prints a per-op
table and "N passed, N failed".

ggml's client aborts the whole process when a server refuses a graph or drops
the connection, so a run is restarted past the case it died on (the case
order comes from the suite's `support` mode, which computes nothing); that
case counts as an abort. The server is watched too: if it dies, that is
counted and it is started again.

  scripts/ggml-conformance.py --ggml DIR [--server ferry|ggml] [--ops A,B | --llama]

DIR is a ggml build made by ggml's build.sh (DIR/build/bin/test-backend-ops,
DIR/librpc_preload.so, DIR/rpc-server). With --server ferry (the default) it
runs build/ferry serve (or --ferry PATH); with --server ggml, ggml's own
rpc-server, the yardstick. Exit status 1 when a case failed, aborted the
client or crashed the server."""
import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time

# what a llama-family model's graphs use (llama, mistral, qwen2, qwen3)
# (the suite names GLU and UNARY cases by their sub-op: SWIGLU, SILU, ...)
LLAMA_OPS = ["ADD", "MUL", "SCALE", "RMS_NORM", "MUL_MAT", "MUL_MAT_ID", "ROPE", "SOFT_MAX",
             "FLASH_ATTN_EXT", "GET_ROWS", "SET_ROWS", "CPY", "CONT", "DUP", "SWIGLU", "GEGLU", "SILU",
             "GELU", "ARGMAX", "ADD_ID", "VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE", "SUM_ROWS", "ARGSORT",
             "TOP_K", "CONCAT", "REPEAT"]

# "  OP(params): OK", or after a numeric failure "[OP] ERR = ... OP(params): FAIL"
RESULT_RE = re.compile(r"(?:^|\s)([A-Z][A-Z0-9_]*\(.*?\)):\s+\S*?(OK|FAIL|not supported)")
SUMMARY_RE = re.compile(r"^\s+(\d+)/(\d+) tests passed")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class Server:
    def __init__(self, args):
        self.args = args
        self.proc = None
        self.port = None
        self.crashes = 0
        self.log = open(args.server_log, "ab") if args.server_log else subprocess.DEVNULL

    def start(self):
        self.port = free_port()
        if self.args.server == "ferry":
            cmd = [self.args.ferry, "serve", "-H", "127.0.0.1", "-p", str(self.port), "-t", str(self.args.threads),
                   "--log-level", "warn"]
        else:
            cmd = [os.path.join(self.args.ggml, "rpc-server"), "-H", "127.0.0.1", "-p", str(self.port), "-t",
                   str(self.args.threads)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)
        if not wait_listening(self.port, self.proc):
            raise SystemExit(f"ggml-conformance: the server did not start: {' '.join(cmd)}")

    def check_alive(self):
        """True if it had died (and was started again)."""
        if self.proc.poll() is None:
            return False
        self.crashes += 1
        print(f"  !! server died (status {self.proc.returncode}); starting it again", flush=True)
        self.start()
        return True

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_suite(args, server, mode, op, params=None):
    """One test-backend-ops process; returns (lines, finished)."""
    env = dict(os.environ)
    env["GGML_RPC_SERVERS"] = f"127.0.0.1:{server.port}"
    # line-buffered stdout, so that the cases done before an abort are seen
    preload = [os.path.join(args.ggml, "librpc_preload.so")]
    if os.path.exists(args.stdbuf):
        preload.insert(0, args.stdbuf)
        env["_STDBUF_O"] = "L"
    env["LD_PRELOAD"] = " ".join(preload)
    cmd = [os.path.join(args.ggml, "build", "bin", "test-backend-ops"), mode, "-b", "RPC0", "-o", op]
    if params:
        cmd += ["-p", params]
    try:
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=args.timeout)
        out, rc = p.stdout, p.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = e.stdout or b"", "timeout"
    lines = out.decode("utf-8", "replace").splitlines()
    finished = rc == 0 or any(SUMMARY_RE.match(l) for l in lines)
    return lines, finished, rc


def case_list(args, server, op):
    lines, _, _ = run_suite(args, server, "support", op)
    cases = []
    for l in lines:
        m = re.match(r"^\s+([A-Z][A-Z0-9_]*\(.*\)):\s", l)
        if m and m.group(1).split("(")[0] == op:
            cases.append(m.group(1))
    return cases


def results_of(lines, op):
    res = {}
    for l in lines:
        m = RESULT_RE.search(l)
        if m and m.group(1).split("(")[0] == op:
            res[m.group(1)] = m.group(2)
    return res


def run_op(args, server, op):
    row = {"op": op, "cases": 0, "passed": 0, "failed": 0, "unsupported": 0, "aborts": 0, "crashes": 0,
           "skipped": 0, "failures": []}
    cases = case_list(args, server, op)
    params = None
    if args.skip:
        kept = [c for c in cases if not re.search(args.skip, c)]
        row["skipped"] = len(cases) - len(kept)
        cases = kept
        # the suite filters by its params regex: everything but the skipped
        params = f"^(?!.*(?:{args.skip}))"
    row["cases"] = len(cases)
    if not cases:
        return row
    lines, finished, rc = run_suite(args, server, "test", op, params)
    results = results_of(lines, op)
    if server.check_alive():
        row["crashes"] += 1
    if not finished:
        # restart past the case it died on, one case a process from there
        done = len(results)
        for i in range(done, len(cases)):
            name = cases[i]
            if name in results:
                continue
            if i == done:
                results[name] = "ABORT"
                continue
            l2, fin2, rc2 = run_suite(args, server, "test", name)
            r2 = results_of(l2, op)
            results[name] = r2.get(name, "ABORT" if not fin2 else "missing")
            if server.check_alive():
                row["crashes"] += 1
    for name in cases:
        r = results.get(name, "missing")
        if r == "OK":
            row["passed"] += 1
        elif r == "not supported":
            row["unsupported"] += 1
        elif r == "ABORT":
            row["aborts"] += 1
            row["failures"].append(("abort", name))
        else:
            row["failed"] += 1
            row["failures"].append((r.lower(), name))
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ggml", required=True, help="ggml build made by build.sh")
    ap.add_argument("--server", choices=["ferry", "ggml"], default="ferry")
    ap.add_argument("--ferry", default="build/ferry")
    ap.add_argument("--ops", help="comma-separated op names (default: every op the suite has)")
    ap.add_argument("--llama", action="store_true", help="the ops of llama-family models")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per test-backend-ops process")
    ap.add_argument("--server-log", help="append the server's output to this file")
    ap.add_argument("--stdbuf", default="/usr/libexec/coreutils/libstdbuf.so")
    ap.add_argument("--markdown", help="also write the table to this file")
    ap.add_argument("--skip", help="leave out the cases whose parameters match this regex (counted as skipped)")
    args = ap.parse_args()

    if args.ops:
        ops = args.ops.split(",")
    elif args.llama:
        ops = LLAMA_OPS
    else:
        out = subprocess.run([os.path.join(args.ggml, "build", "bin", "test-backend-ops"), "--list-ops"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout.decode()
        ops = [l.strip() for l in out.splitlines()[1:] if re.match(r"^\s+[A-Z][A-Z0-9_]*$", l)]

    server = Server(args)
    server.start()
    rows = []
    t0 = time.time()
    try:
        for op in ops:
            t = time.time()
            row = run_op(args, server, op)
            rows.append(row)
            print(f"{op:<22} {row['cases']:>5} cases  {row['passed']:>5} ok  {row['failed']:>4} failed  "
                  f"{row['aborts']:>4} aborts  {row['unsupported']:>4} not supported"
                  + (f"  {row['skipped']} skipped" if row["skipped"] else "") + f"  ({time.time() - t:.1f} s)",
                  flush=True)
            for kind, name in row["failures"][:5]:
                print(f"    {kind}: {name}", flush=True)
    finally:
        server.stop()

    tot = {k: sum(r[k] for r in rows)
           for k in ("cases", "passed", "failed", "unsupported", "aborts", "crashes", "skipped")}
    table = ["| op | cases | passed | failed | client aborts | not supported |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["cases"]:
            table.append(f"| {r['op']} | {r['cases']} | {r['passed']} | {r['failed']} | {r['aborts']} | "
                         f"{r['unsupported']} |")
    table.append(f"| **total** | {tot['cases']} | {tot['passed']} | {tot['failed']} | {tot['aborts']} | "
                 f"{tot['unsupported']} |")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(table) + "\n")
    print(f"server: {args.server}; {len(ops)} ops; server crashes: {server.crashes}; {time.time() - t0:.0f} s")
    print(f"{tot['passed']} passed, {tot['failed'] + tot['aborts']} failed "
          f"({tot['aborts']} client aborts, {tot['unsupported']} not supported"
          + (f", {tot['skipped']} skipped by --skip" if tot["skipped"] else "") + ")")
    bad = tot["failed"] + tot["aborts"] + server.crashes
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
