#define _GNU_SOURCE
#include "CSrvSystem.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

int srv_sys_signalfd(const int *signals, int count) {
    sigset_t set;
    int i;
    sigemptyset(&set);
    for (i = 0; i < count; i++) sigaddset(&set, signals[i]);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) return -1;
    return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}

int srv_sys_signalfd_read(int fd) {
    struct signalfd_siginfo info;
    ssize_t n = read(fd, &info, sizeof info);
    if (n == (ssize_t)sizeof info) return (int)info.ssi_signo;
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    return -1;
}

int srv_sys_block_signals(const int *signals, int count) {
    sigset_t set;
    int i;
    sigemptyset(&set);
    for (i = 0; i < count; i++) sigaddset(&set, signals[i]);
    return pthread_sigmask(SIG_BLOCK, &set, NULL);
}

static const int master_signals[] = {SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGTTIN, SIGTTOU,
                                     SIGUSR1, SIGUSR2, SIGCHLD, SIGWINCH};

const int *srv_sys_master_signals(int *count) {
    *count = (int)(sizeof master_signals / sizeof master_signals[0]);
    return master_signals;
}

__attribute__((constructor)) static void srv_sys_block_master_signals_early(int argc, char **argv, char **envp) {
    static const char *const tools[] = {"check", "status", "worker", "--help", "-h", "help", "--version"};
    const char *name;
    size_t i;
    (void)envp;
    if (argc < 1 || argv == NULL || argv[0] == NULL) return;
    name = strrchr(argv[0], '/');
    name = name ? name + 1 : argv[0];
    if (strcmp(name, "srv") != 0) return;  /* not the server (a test runner linking this) */
    if (argc > 1)
        for (i = 0; i < sizeof tools / sizeof tools[0]; i++)
            if (strcmp(argv[1], tools[i]) == 0) return;
    srv_sys_block_signals(master_signals, (int)(sizeof master_signals / sizeof master_signals[0]));
}

unsigned srv_sys_thread_index(void) {
    static _Atomic unsigned next;
    static _Thread_local unsigned index = ~0u;
    if (index == ~0u) index = next++;
    return index;
}

void srv_sys_atomic_add_u64(uint64_t *p, uint64_t n) { __atomic_fetch_add(p, n, __ATOMIC_RELAXED); }

void srv_sys_unblock_all_signals(void) {
    sigset_t set;
    sigemptyset(&set);
    pthread_sigmask(SIG_SETMASK, &set, NULL);
}
