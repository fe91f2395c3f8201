/* The ferry command as a user runs it: exit codes and the messages of
 * option errors, threads, gen-model's file handling, machine-readable
 * output ($FERRY_BIN is the built binary). */
#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

static const char *bin;
static char tmpdir[256], model[512];
static char srcdir[512]; /* the project's root, for its scripts */

/* Runs `ferry ARGS` (through sh, bounded by timeout(1)) with stdout and
 * stderr into out, or only stdout when stdout_only; returns the exit code
 * (-1 if it did not exit normally). */
static int run_ferry_to(const char *args, char *out, size_t cap, bool stdout_only) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "timeout 300 %s %s %s </dev/null", bin, args, stdout_only ? "2>/dev/null" : "2>&1");
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int run_ferry(const char *args, char *out, size_t cap) { return run_ferry_to(args, out, cap, false); }

static int count(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle)) n++;
    return n;
}

static int cpus_allowed(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    return sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
}

/* --log-level takes the four level names and nothing else, on every command. */
static void test_log_level(void) {
    char out[8192];
    const char *cmds[] = { "run -m /nonexistent.gguf", "bench model -m /nonexistent.gguf" };
    for (size_t c = 0; c < sizeof cmds / sizeof cmds[0]; c++) {
        const char *levels[] = { "error", "warn", "info", "debug" };
        for (size_t l = 0; l < 4; l++) {
            char args[256];
            snprintf(args, sizeof args, "%s --log-level %s", cmds[c], levels[l]);
            int rc = run_ferry(args, out, sizeof out);
            CHECK(rc != 0 && !strstr(out, "--log-level") && strstr(out, "nonexistent.gguf"),
                  "`ferry %s`: a valid level is accepted and the missing model reported (rc %d): %s", args, rc,
                  out);
        }
        char args[256];
        snprintf(args, sizeof args, "%s --log-level bogus", cmds[c]);
        int rc = run_ferry(args, out, sizeof out);
        CHECK(rc != 0 && strstr(out, "--log-level"), "`ferry %s` refused (rc %d): %s", args, rc, out);
    }
}

/* Item by item: every command's own help, --version everywhere, usage
 * errors exit 2 and name the command. */
static void test_consistency(void) {
    static char out[65536];
    int rc = run_ferry("serve --help", out, sizeof out);
    CHECK(rc == 0 && strstr(out, "usage: ferry serve") && strstr(out, "--cache-size") && !strstr(out, "gen-model") &&
              !strstr(out, "bench rpc"),
          "serve --help prints serve's help only (rc %d)", rc);
    const char *cmds[] = { "serve", "run", "gen-model", "bench model", "bench rpc", "bench net" };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char args[256];
        snprintf(args, sizeof args, "%s --help", cmds[i]);
        rc = run_ferry(args, out, sizeof out);
        char want[64];
        snprintf(want, sizeof want, "usage: ferry %s", cmds[i]);
        CHECK(rc == 0 && strstr(out, want) && strstr(out, "exit status: 0 success, 1 runtime error, 2 usage error"),
              "`ferry %s`: its own help, with the exit codes (rc %d)", args, rc);
        snprintf(args, sizeof args, "%s --version", cmds[i]);
        rc = run_ferry(args, out, sizeof out);
        CHECK(rc == 0 && !strncmp(out, "ferry ", 6) && strstr(out, "protocol"), "`ferry %s` (rc %d): %s", args, rc,
              out);
        snprintf(args, sizeof args, "%s --no-such-option", cmds[i]);
        rc = run_ferry(args, out, sizeof out);
        snprintf(want, sizeof want, "ferry %s: unknown option '--no-such-option'", cmds[i]);
        CHECK(rc == 2 && strstr(out, want), "`ferry %s`: usage error, exit 2 (rc %d): %s", args, rc, out);
    }
    rc = run_ferry("bench", out, sizeof out);
    CHECK(rc == 2, "bare `ferry bench` is a usage error (rc %d)", rc);
    rc = run_ferry("nonsense", out, sizeof out);
    CHECK(rc == 2, "an unknown command is a usage error (rc %d)", rc);
    rc = run_ferry("serve -p notaport", out, sizeof out);
    CHECK(rc == 2 && strstr(out, "-p") && strstr(out, "notaport"), "serve -p notaport (rc %d): %s", rc, out);
    rc = run_ferry("gen-model --size 2M", out, sizeof out);
    CHECK(rc == 2 && strstr(out, "-o PATH is required"), "gen-model without -o (rc %d): %s", rc, out);
    rc = run_ferry("run -n 4", out, sizeof out);
    CHECK(rc == 2 && strstr(out, "-m MODEL.gguf is required"), "run without -m (rc %d): %s", rc, out);
    rc = run_ferry("bench rpc", out, sizeof out);
    CHECK(rc == 2 && strstr(out, "--rpc HOST:PORT is required"), "bench rpc without --rpc (rc %d): %s", rc, out);
    rc = run_ferry("run --threads=x -m m.gguf", out, sizeof out);
    CHECK(rc == 2 && strstr(out, "--threads: 'x'"), "--name=value is read as the value (rc %d): %s", rc, out);
    /* the RDMA choices exist wherever a client connects */
    const char *rdma[] = { "run --help", "bench rpc --help", "bench model --help", "serve --help" };
    for (size_t i = 0; i < 4; i++) {
        rc = run_ferry(rdma[i], out, sizeof out);
        CHECK(strstr(out, "--rdma-dev NAME") && strstr(out, "--rdma-ip ADDR"), "`ferry %s` lists --rdma-dev/--rdma-ip",
              rdma[i]);
    }
    rc = run_ferry("bench rpc --rpc 127.0.0.1:1 --rdma-dev nodev --quiet", out, sizeof out);
    CHECK(rc == 1 && !strstr(out, "unknown option"), "bench rpc takes --rdma-dev (rc %d): %s", rc, out);
}

/* Nonsense that used to be accepted silently. */
static void test_refusals(void) {
    static char out[65536];
    char args[1024];
    struct {
        const char *args, *want;
    } cases[] = {
        { "-ts 0/0 --rpc 127.0.0.1:1,127.0.0.1:2", "add up to 0" },
        { "-ts 1/1/1 --rpc 127.0.0.1:1,127.0.0.1:2", "more entries than the 2 servers" },
        { "-ts 1/1", "give --rpc" },
        { "-ts 1/x --rpc 127.0.0.1:1,127.0.0.1:2", "expected non-negative numbers" },
        { "-ngl 4", "give --rpc" },
        { "--rpc ''", "--rpc: empty value" },
        { "--rpc 127.0.0.1:1,", "is not HOST:PORT" },
        { "--rpc nohostport", "is not HOST:PORT" },
        { "-c 0", "-c: '0'" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *cmd = i % 2 ? "bench model" : "run";
        snprintf(args, sizeof args, "%s -m %s %s", cmd, model, cases[i].args);
        int rc = run_ferry(args, out, sizeof out);
        CHECK(rc == 2 && strstr(out, cases[i].want), "`ferry %s` refused with '%s' (rc %d): %s", args, cases[i].want,
              rc, out);
    }
    /* -c below the KV cache's step, and above the trained context: said */
    snprintf(args, sizeof args, "run -m %s -n 1 -c 4 --no-progress", model);
    int rc = run_ferry(args, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "-c 4: the KV cache holds 256 tokens"), "-c 4 rounded up and said so (rc %d): %s",
          rc, out);
    snprintf(args, sizeof args, "run -m %s -n 1 -c 1000 --no-progress", model);
    rc = run_ferry(args, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "warning: -c 1000 is above the model's trained context of 512"),
          "-c above the trained context warned (rc %d): %s", rc, out);
}

/* Messages: each place named once, and the right place. */
static void test_messages(void) {
    static char out[65536];
    char args[1024], path[600];
    int rc = run_ferry("run -m /nonexistent-dir/model.gguf", out, sizeof out);
    CHECK(rc == 1 && count(out, "/nonexistent-dir/model.gguf") == 1 && strstr(out, "No such file"),
          "a missing model named once (rc %d): %s", rc, out);
    snprintf(path, sizeof path, "%s/empty.gguf", tmpdir);
    FILE *f = fopen(path, "w");
    if (f) fclose(f);
    snprintf(args, sizeof args, "run -m %s", path);
    rc = run_ferry(args, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "empty file") && !strstr(out, "magic") && count(out, path) == 1,
          "an empty model file is an empty file (rc %d): %s", rc, out);
    snprintf(args, sizeof args, "run -m %s --rpc 127.0.0.1:1 -n 1 --no-progress", model);
    rc = run_ferry(args, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "127.0.0.1:1") && !strstr(out, model), "a server's error without the model's name "
          "(rc %d): %s", rc, out);
    rc = run_ferry("serve -c ''", out, sizeof out);
    CHECK(rc == 2 && strstr(out, "-c: empty value") && !strstr(out, "Success"), "serve -c '' (rc %d): %s", rc, out);
    /* /proc/self exists and opens as a directory but takes no new file, even for root */
    rc = run_ferry("serve -p 0 -c /proc/self --log-level warn", out, sizeof out);
    CHECK(rc == 1 && strstr(out, "cache dir /proc/self is not writable"), "an unwritable cache dir refused at start "
          "(rc %d): %s", rc, out);
}

/* Threads: the default is at most the CPUs; more warns, far more is refused;
 * the text does not depend on the count. */
static void test_threads(void) {
    static char out[65536], one[65536], many[65536];
    char args[1024];
    int cpus = cpus_allowed();
    snprintf(args, sizeof args, "run -m %s -n 1 --no-progress", model);
    int rc = run_ferry(args, out, sizeof out);
    const char *t = strstr(out, " threads\n");
    int n = 0;
    while (t && t > out && t[-1] >= '0' && t[-1] <= '9') t--;
    if (t) n = atoi(t);
    CHECK(rc == 0 && n >= 1 && n <= cpus && !strstr(out, "oversubscribed"),
          "default threads within the %d allowed CPUs: %d (rc %d)", cpus, n, rc);
    snprintf(args, sizeof args, "run -m %s -t 100000", model);
    rc = run_ferry(args, out, sizeof out);
    CHECK(rc == 2 && strstr(out, "too many threads"), "-t 100000 refused (rc %d): %s", rc, out);
    int over = 4 * cpus + 1 > 512 ? 513 : 4 * cpus + 1;
    snprintf(args, sizeof args, "bench model -m %s -t %d", model, over);
    rc = run_ferry(args, out, sizeof out);
    CHECK(rc == 2 && strstr(out, "too many threads"), "-t %d on %d CPUs refused (rc %d): %s", over, cpus, rc, out);
    if (cpus + 1 > 512) return;
    snprintf(args, sizeof args, "run -m %s -t %d -n 1 --no-progress", model, cpus + 1);
    rc = run_ferry(args, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "oversubscribed"), "-t %d on %d CPUs warned (rc %d): %s", cpus + 1, cpus, rc, out);
    /* greedy text, one thread and more threads than CPUs */
    snprintf(args, sizeof args, "run -m %s -t 1 -n 24 --temp 0 --ignore-eos --no-progress", model);
    int rc1 = run_ferry_to(args, one, sizeof one, true);
    snprintf(args, sizeof args, "run -m %s -t %d -n 24 --temp 0 --ignore-eos --no-progress", model, cpus + 1);
    int rc2 = run_ferry_to(args, many, sizeof many, true);
    CHECK(rc1 == 0 && rc2 == 0 && strlen(one) > strlen("Once upon a time") && !strcmp(one, many),
          "the same text with 1 and %d threads:\n%s\n%s", cpus + 1, one, many);
}

static bool dir_is_empty_but(const char *dir, const char *keep) {
    DIR *d = opendir(dir);
    if (!d) return false;
    bool empty = true;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strcmp(e->d_name, keep)) empty = false;
    closedir(d);
    return empty;
}

static bool has_partial(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return false;
    bool found = false;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (strstr(e->d_name, ".gen-part")) found = true;
    closedir(d);
    return found;
}

/* gen-model: an existing file kept, a stopped one leaves nothing. */
static void test_gen_model(void) {
    static char out[65536];
    char args[1024], dir[600], path[700];
    snprintf(args, sizeof args, "gen-model -o %s --no-progress", model);
    int rc = run_ferry(args, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "exists (--force overwrites it)"), "an existing file refused (rc %d): %s", rc, out);
    snprintf(dir, sizeof dir, "%s/stop", tmpdir);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/big.gguf", dir);
    snprintf(args, sizeof args, "gen-model -o %s/nodir/x.gguf --no-progress", dir);
    rc = run_ferry(args, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "nodir/x.gguf:") && !strstr(out, "gen-part") && !strstr(out, ".tmp."),
          "an error names the target, not a temporary file (rc %d): %s", rc, out);
    int sigs[2] = { SIGTERM, SIGINT };
    for (int k = 0; k < 2; k++) {
        pid_t pid = fork();
        if (pid == 0) {
            int null = open("/dev/null", O_WRONLY);
            dup2(null, 1);
            dup2(null, 2);
            execl(bin, bin, "gen-model", "-o", path, "--size", "1G", (char *)NULL);
            _exit(127);
        }
        /* stop it once its partial file is there (bounded: 60 s) */
        bool seen = false;
        for (int i = 0; i < 12000 && !(seen = has_partial(dir)); i++) nanosleep(&(struct timespec){ 0, 5000000 }, NULL);
        kill(pid, sigs[k]);
        int st = 0;
        waitpid(pid, &st, 0);
        CHECK(seen && WIFEXITED(st) && WEXITSTATUS(st) == 128 + sigs[k] && dir_is_empty_but(dir, ""),
              "signal %d: exit %d, no partial or complete file left", sigs[k], WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    }
    rmdir(dir);
}

/* Machine-readable output. */
static void test_output(void) {
    static char out[65536];
    char args[1024];
    snprintf(args, sizeof args, "run -m %s -n 8 --temp 0 --ignore-eos --json --no-progress", model);
    int rc = run_ferry_to(args, out, sizeof out, true);
    CHECK(rc == 0 && out[0] == '{' && strstr(out, "\"text\": \"") && strstr(out, "\"n_gen\": 8") &&
              strstr(out, "\"gen_tps\": ") && strstr(out, "\"nodes\": [{\"name\": \"local\"") &&
              strstr(out, "\"threads\": ") && count(out, "\n") == 1,
          "run --json: one object with text, timings and nodes (rc %d): %s", rc, out);
    snprintf(args, sizeof args, "bench model -m %s -p 8,16 -n 4 -r 1 -t 1 -o json --no-progress", model);
    rc = run_ferry_to(args, out, sizeof out, true);
    CHECK(rc == 0 && strstr(out, "\"threads\": 1,") && strstr(out, "\"test\": \"pp8\"") &&
              strstr(out, "\"test\": \"pp16\"") && strstr(out, "\"test\": \"tg4\"") &&
              strstr(out, "\"nodes\": [{\"name\": \"local\""),
          "bench model -o json: threads, every test, nodes (rc %d): %s", rc, out);
    snprintf(args, sizeof args, "bench model -m %s -p 8 -n 4,2 -r 2 -o csv --no-progress", model);
    rc = run_ferry_to(args, out, sizeof out, true);
    CHECK(rc == 0 && !strncmp(out, "model,size_bytes,params,backend,threads,", 40) && count(out, "\n") == 4 &&
              strstr(out, ",pp8,") && strstr(out, ",tg4,") && strstr(out, ",tg2,"),
          "bench model -o csv: a header and a row per test (rc %d): %s", rc, out);
    snprintf(args, sizeof args, "bench model -m %s -p 8 -n 4 -r 1 -t 1", model);
    rc = run_ferry_to(args, out, sizeof out, true);
    CHECK(rc == 0 && strstr(out, "| backend | threads | test | t/s |") && strstr(out, "| 1 | pp8 |") &&
              !strstr(out, "| load |") && strstr(out, "load: "),
          "bench model table: a threads column, the load time outside t/s (rc %d): %s", rc, out);
    rc = run_ferry(args, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "bench model: pp8 run 1/1"), "bench model progress on stderr (rc %d): %s", rc, out);
}

/* bench rpc against a ferry serve of this test (loopback, any free port):
 * user output without internal targets; --net none measures the server alone. */
static void test_bench_rpc(void) {
    static char out[65536];
    char log[600], args[1024];
    snprintf(log, sizeof log, "%s/serve.log", tmpdir);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 2);
        execl(bin, bin, "serve", "-p", "0", "-t", "1", (char *)NULL);
        _exit(127);
    }
    int port = 0;
    for (int i = 0; i < 1000 && port == 0; i++) { /* 10 s at most */
        nanosleep(&(struct timespec){ 0, 10000000 }, NULL);
        FILE *f = fopen(log, "r");
        char line[256];
        while (f && fgets(line, sizeof line, f))
            if (sscanf(line, "  endpoint   : 127.0.0.1:%d", &port) == 1) break;
        if (f) fclose(f);
    }
    if (CHECK(port > 0, "ferry serve -p 0 started")) {
        snprintf(args, sizeof args, "bench rpc --rpc 127.0.0.1:%d --quick --max-size 64K --iterations 20", port);
        int rc = run_ferry(args, out, sizeof out);
        CHECK(rc == 0 && strstr(out, "GET_ALIGNMENT") && strstr(out, "bare TCP ping-pong 13/16 B ") &&
                  !strstr(out, "acceptance") && !strstr(out, "target") && strstr(out, "bench: [1/"),
              "bench rpc: the table without internal targets, progress on stderr (rc %d): %s", rc, out);
        snprintf(args, sizeof args, "bench rpc --rpc 127.0.0.1:%d --net none --quick --max-size 4K --iterations 20 "
                 "--quiet", port);
        rc = run_ferry(args, out, sizeof out);
        CHECK(rc == 0 && strstr(out, "no bare TCP comparison") && strstr(out, "n/a (no bare link)") &&
                  strstr(out, "GET_ALIGNMENT "),
              "bench rpc --net none: the server alone, said so (rc %d): %s", rc, out);
        /* the scripts refuse a taken port before doing anything */
        const char *scripts[][2] = { { "scripts/setup.sh", "FERRY_DEMO_PORT" },
                                     { "bench/model-split.sh 1M 1", "FERRY_BENCH_PORT" } };
        for (int k = 0; k < 2 && srcdir[0]; k++) {
            char cmd[2048];
            snprintf(cmd, sizeof cmd, "cd %s && %s=%d timeout 60 bash %s 2>&1 </dev/null", srcdir, scripts[k][1], port,
                     scripts[k][0]);
            FILE *p = popen(cmd, "r");
            size_t n = p ? fread(out, 1, sizeof out - 1, p) : 0;
            out[n] = '\0';
            int st = p ? pclose(p) : -1;
            char want[64];
            snprintf(want, sizeof want, "port(s) %d already in use", port);
            CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1 && strstr(out, want) && strstr(out, scripts[k][1]) &&
                      !strstr(out, "=="),
                  "%s with its port taken fails at once, naming it and %s: %s", scripts[k][0], scripts[k][1], out);
        }
    }
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

int main(int argc, char **argv) {
    bin = getenv("FERRY_BIN");
    if (argc > 1) { /* ctest passes tests/golden */
        snprintf(srcdir, sizeof srcdir, "%s/../..", argv[1]);
        char probe[600];
        snprintf(probe, sizeof probe, "%s/scripts/ports.sh", srcdir);
        if (access(probe, R_OK) != 0) srcdir[0] = '\0';
    }
    if (!bin) {
        fprintf(stderr, "test_cli: FERRY_BIN is not set (ctest sets it)\n");
        return 1;
    }
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ferry-test-cli-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(model, sizeof model, "%s/tiny.gguf", tmpdir);
    char xdg[600];
    snprintf(xdg, sizeof xdg, "%s/xdg", tmpdir);
    setenv("XDG_CACHE_HOME", xdg, 1); /* the commands' caches and memos, not the user's */
    char args[1024], out[8192];
    snprintf(args, sizeof args, "gen-model -o %s --n-ctx 512 --no-progress", model);
    int rc = run_ferry(args, out, sizeof out);
    CHECK(rc == 0, "a tiny model (rc %d): %s", rc, out);
    test_log_level();
    test_consistency();
    test_refusals();
    test_messages();
    test_threads();
    test_gen_model();
    test_output();
    test_bench_rpc();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "test_cli: could not remove %s\n", tmpdir);
    return test_summary();
}
