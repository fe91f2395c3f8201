/* ferry: how many threads a command runs by default, and what it refuses.
 *
 * The default is llama.cpp's: one thread per physical core (hyperthread
 * siblings share a core's arithmetic units, so a second thread on a core
 * mostly waits), counted among the CPUs this process may run on
 * (sched_getaffinity: taskset, cgroups' cpusets). More threads than those
 * CPUs take turns on them, and every barrier of a graph then waits for a
 * thread that is not running: a warning; far more is refused. */
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/opts.h"

#define MAX_THREADS 512
#define MAX_OVERSUBSCRIBE 4

int cli_cpus_allowed(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static bool read_long(const char *path, long *out) {
    FILE *f = fopen(path, "r");
    if (!f) return false;
    bool ok = fscanf(f, "%ld", out) == 1;
    fclose(f);
    return ok;
}

int cli_default_threads(void) {
    int allowed = cli_cpus_allowed();
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return allowed;
    /* distinct (package, core) pairs among the allowed CPUs */
    long seen[2 * CPU_SETSIZE];
    int n_seen = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &set)) continue;
        char path[128];
        long core, pkg = 0;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/core_id", cpu);
        if (!read_long(path, &core)) return allowed; /* no topology: count CPUs */
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", cpu);
        read_long(path, &pkg);
        bool dup = false;
        for (int i = 0; i < n_seen && !dup; i++) dup = seen[2 * i] == pkg && seen[2 * i + 1] == core;
        if (!dup) {
            seen[2 * n_seen] = pkg;
            seen[2 * n_seen + 1] = core;
            n_seen++;
        }
    }
    return n_seen > 0 && n_seen <= allowed ? n_seen : allowed;
}

int cli_check_threads(const char *cmd, const char *opt, int n) {
    int cpus = cli_cpus_allowed();
    if (n > MAX_THREADS || n > MAX_OVERSUBSCRIBE * cpus) {
        fprintf(stderr,
                "ferry %s: %s %d: too many threads for %d CPU%s (at most %d: %dx the CPUs, and never above %d; "
                "default %d) (ferry %s --help)\n",
                cmd, opt, n, cpus, cpus == 1 ? "" : "s",
                MAX_OVERSUBSCRIBE * cpus < MAX_THREADS ? MAX_OVERSUBSCRIBE * cpus : MAX_THREADS, MAX_OVERSUBSCRIBE,
                MAX_THREADS, cli_default_threads(), cmd);
        return EXIT_USAGE;
    }
    if (n > cpus)
        fprintf(stderr,
                "ferry %s: warning: %d threads on %d CPU%s: oversubscribed, threads will take turns and run slower "
                "(default %d)\n",
                cmd, n, cpus, cpus == 1 ? "" : "s", cli_default_threads());
    return 0;
}
