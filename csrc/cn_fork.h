/* Fork safety for the OpenMP pool (included by _openmp.pyx only).

libgomp keeps its worker threads in a pool that a child made by fork() inherits as
memory but not as threads: the child's first parallel region with more than one
thread waits forever for workers that do not exist. As other OpenMP libraries do,
a pthread_atfork child handler makes such a child single-threaded: it sets the
OpenMP thread count to 1 (a region with one thread never touches the pool) and
flags the process so that cn.set_num_threads cannot raise it again.

The prepare handler counts the parent's threads (/proc/self/stat): a parent with
one thread has no pool (libgomp's workers are persistent threads), so its children
keep their thread count, e.g. workers forked before any parallel work ran. */
#ifndef CN_FORK_H
#define CN_FORK_H
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>
#include "cn_omp.h"

static volatile int cn_fork_parent_threads = -1;  /* threads at the last fork; -1: unknown */
static volatile int cn_fork_single = 0;           /* 1: a child of a multi-threaded parent */
static int cn_fork_registered = 0;

/* Number of threads of this process from /proc/self/stat (field 20), or -1. Only
   open/read/close: nothing that takes a lock another thread may hold. */
static int cn_fork_count_threads(void) {
    char buf[1024];
    ssize_t n = 0, got;
    int fd = open("/proc/self/stat", O_RDONLY);
    if (fd < 0) return -1;
    while (n < (ssize_t)sizeof(buf) - 1 && (got = read(fd, buf + n, sizeof(buf) - 1 - n)) > 0)
        n += got;
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')');   /* the command name may hold spaces and parentheses */
    if (p == NULL) return -1;
    p++;
    /* after ')': state is field 3, num_threads field 20, i.e. the 18th token */
    for (int field = 3; field < 20; field++) {
        while (*p == ' ') p++;
        while (*p && *p != ' ') p++;
        if (!*p) return -1;
    }
    while (*p == ' ') p++;
    int threads = 0;
    if (*p < '0' || *p > '9') return -1;
    while (*p >= '0' && *p <= '9') threads = threads * 10 + (*p++ - '0');
    return threads;
}

static void cn_fork_prepare(void) { cn_fork_parent_threads = cn_fork_count_threads(); }

static void cn_fork_child(void) {
    if (cn_fork_parent_threads != 1) {   /* more than one thread, or unknown: be safe */
        cn_fork_single = 1;
        cn_omp_set_num_threads(1);
    }
}

/* Register the handlers once per process; 0 on success. */
static int cn_fork_register(void) {
    if (cn_fork_registered) return 0;
    int rc = pthread_atfork(cn_fork_prepare, NULL, cn_fork_child);
    if (rc == 0) cn_fork_registered = 1;
    return rc;
}

static int cn_fork_is_single(void) { return cn_fork_single; }
static int cn_fork_threads_at_fork(void) { return cn_fork_parent_threads; }
#endif
