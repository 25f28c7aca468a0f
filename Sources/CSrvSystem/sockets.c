#define _GNU_SOURCE
#include "CSrvSystem.h"

#include <stddef.h>
#include <sys/ioctl.h>
#include <netinet/in.h>
#include <linux/tcp.h>
#include <sys/socket.h>

int srv_sys_accept_nonblocking(int fd) { return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); }

int srv_sys_unsent_bytes(int fd) {
    int n = 0;
    /* TIOCOUTQ (SIOCOUTQ): bytes in the socket's send queue the peer has not yet taken. */
    if (ioctl(fd, TIOCOUTQ, &n) != 0) return -1;
    return n;
}

int srv_sys_unread_bytes(int fd) {
    int n = 0;
    if (ioctl(fd, FIONREAD, &n) != 0) return -1;
    return n;
}

uint64_t srv_sys_send_progress(int fd) {
    struct tcp_info info;
    socklen_t len = sizeof info;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) == 0 &&
        len >= offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof info.tcpi_bytes_acked)
        return info.tcpi_bytes_acked;
    return (uint64_t)(uint32_t)srv_sys_unsent_bytes(fd);
}

int srv_sys_listen_queue_length(int fd) {
    struct tcp_info info;
    socklen_t len = sizeof info;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0 || info.tcpi_state != 10 /* TCP_LISTEN */) return -1;
    return (int)info.tcpi_unacked;  /* for a listener: the accept queue's length */
}
