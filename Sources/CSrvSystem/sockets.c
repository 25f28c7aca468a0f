#define _GNU_SOURCE
#include "CSrvSystem.h"

#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

int srv_sys_accept_nonblocking(int fd) { return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); }

int srv_sys_unsent_bytes(int fd) {
    int n = 0;
    /* TIOCOUTQ (SIOCOUTQ): bytes in the socket's send queue the peer has not yet taken. */
    if (ioctl(fd, TIOCOUTQ, &n) != 0) return -1;
    return n;
}
