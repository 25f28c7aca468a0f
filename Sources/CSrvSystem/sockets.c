#define _GNU_SOURCE
#include "CSrvSystem.h"

#include <stddef.h>
#include <sys/socket.h>

int srv_sys_accept_nonblocking(int fd) { return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); }
