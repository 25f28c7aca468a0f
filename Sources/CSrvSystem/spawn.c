#define _GNU_SOURCE
#include "CSrvSystem.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

int srv_sys_spawn(const char *path, char *const argv[], char *const envp[], const int *fds,
                  int nfds, pid_t *pid) {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    sigset_t empty, all;
    int temps[64];
    int rc, i;

    if (nfds < 0 || nfds > 64) return EINVAL;
    /* dup2(fd, fd) would not clear FD_CLOEXEC, so move every source fd above the targets
     * (3 .. 3+nfds-1): the lowest free descriptor from 3+nfds on, so that a low
     * RLIMIT_NOFILE still leaves room. */
    for (i = 0; i < nfds; i++) temps[i] = -1;
    for (i = 0; i < nfds; i++) {
        temps[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3 + nfds);
        if (temps[i] < 0) { rc = errno; goto close_temps; }
    }
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
    for (i = 0; i < nfds; i++) posix_spawn_file_actions_adddup2(&actions, temps[i], 3 + i);
    posix_spawn_file_actions_addclosefrom_np(&actions, 3 + nfds);
    sigemptyset(&empty);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &empty);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    rc = posix_spawn(pid, path, &actions, &attr, argv, envp);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
close_temps:
    for (i = 0; i < nfds; i++) if (temps[i] >= 0) close(temps[i]);
    return rc;
}

int srv_sys_set_parent_death_signal(int sig) { return prctl(PR_SET_PDEATHSIG, sig); }

int srv_sys_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }
