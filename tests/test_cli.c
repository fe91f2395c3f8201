/* The ferry command as a user runs it: exit codes and the messages of
 * option errors ($FERRY_BIN is the built binary). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "testutil.h"

static const char *bin;

/* Runs `ferry ARGS` with stderr into out; returns the exit code (-1 if it
 * did not exit normally). */
static int run_ferry(const char *args, char *out, size_t cap) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1 </dev/null", bin, args);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
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

int main(void) {
    bin = getenv("FERRY_BIN");
    if (!bin) {
        fprintf(stderr, "test_cli: FERRY_BIN is not set (ctest sets it)\n");
        return 1;
    }
    test_log_level();
    return test_summary();
}
