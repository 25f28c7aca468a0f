/*
 * CSrvSystem: the few things srv needs from C.
 *  - posix_spawn with listener fds placed at 3.. (the master never fork()s a Swift process);
 *  - libffi closures that turn a request slot's Swift callbacks into the plain C function
 *    pointers the gateway spec hands to applications;
 *  - signalfd, memfd and SHA-256, which Swift's Glibc module does not expose conveniently;
 *  - the response path's byte loops (http_chars.h, prefixed srv_http_).
 * Every other function is prefixed with the target's name (srv_sys_).
 */
#ifndef CSRVSYSTEM_H
#define CSRVSYSTEM_H

#include <srv/gateway.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "http_chars.h"

/* MARK: - Processes */

/**
 * Starts `path` with `argv` and `envp`; `fds[i]` becomes fd 3+i in the child and every
 * other fd above 2 is closed. The child starts with an empty signal mask and default
 * signal dispositions. Returns 0 and sets *pid, or an errno value.
 */
int srv_sys_spawn(const char *path, char *const argv[], char *const envp[], const int *fds,
                  int nfds, pid_t *pid);

/** pipe2(fds, O_CLOEXEC). */
int srv_sys_pipe_cloexec(int fds[2]);

/** accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC): a worker that stops takes the
 *  connections still waiting in a listen queue (accept4 needs _GNU_SOURCE). */
int srv_sys_accept_nonblocking(int fd);

/** Bytes of a connected socket's send queue the peer has not taken yet (TIOCOUTQ), or -1:
 *  a response NIO finished writing may still be on its way to a slow reader. */
int srv_sys_unsent_bytes(int fd);

/** A close-on-exec memory file (memfd) named `name` holding `bytes`, sealed so that nobody
 *  can change, grow or shrink it; its descriptor, or -1 with errno. A plugin snapshot: no
 *  cleaner of /tmp or of $XDG_RUNTIME_DIR can delete what the master holds open. */
int srv_sys_sealed_file(const char *name, const void *bytes, size_t count);

/** Bytes received on a socket and not yet read (FIONREAD), or -1: a connection whose next
 *  request waits there while the worker was busy is not idle. */
int srv_sys_unread_bytes(int fd);

/** A number that changes whenever the peer takes bytes of the socket's send queue: the
 *  bytes it acknowledged (TCP_INFO) on TCP, the unsent bytes elsewhere. A response that
 *  waits while it stays the same waits for a client that does not read (--send-timeout). */
uint64_t srv_sys_send_progress(int fd);
/** Connections waiting in a listening TCP socket's accept queue, or -1 (not one). */
int srv_sys_listen_queue_length(int fd);

/** Asks the kernel to send `sig` to this process when its parent exits. */
int srv_sys_set_parent_death_signal(int sig);

/* MARK: - Signals */

/** Blocks `signals` in the calling thread and returns a non-blocking signalfd for them. */
int srv_sys_signalfd(const int *signals, int count);
/** Reads one signal from a signalfd: its number, or 0 when none is pending, -1 on error. */
int srv_sys_signalfd_read(int fd);
/** Unblocks every signal in the calling thread. */
void srv_sys_unblock_all_signals(void);
/** Blocks `signals` in the calling thread (and the threads it starts later). */
int srv_sys_block_signals(const int *signals, int count);

/** The signals the master handles through its signalfd. An executable named srv that
 *  serves (not `srv check`, `status`, `worker`, `--help`, `--version`) blocks them in a
 *  constructor, before the Swift runtime and main run, so that a HUP or TERM sent while
 *  it starts waits for the signalfd instead of ending the process. */
const int *srv_sys_master_signals(int *count);

/* MARK: - Threads */

/** A small number for the calling thread, 0, 1, 2... in the order threads first ask: a
 *  worker's scoreboard entry for the requests this thread runs. */
unsigned srv_sys_thread_index(void);
/** Atomically adds `n` to `*p` (a scoreboard counter several threads update). */
void srv_sys_atomic_add_u64(uint64_t *p, uint64_t n);

/* MARK: - Shared memory */

/** memfd_create(name, MFD_CLOEXEC) sized to `size`; -1 on error. */
int srv_sys_memfd(const char *name, size_t size);

/* MARK: - Hashing */

/** SHA-256 of `len` bytes. */
void srv_sys_sha256(const void *data, size_t len, uint8_t out[32]);

/* MARK: - Request callables bound with libffi closures */

/** What a request slot implements; `context` is passed back as the first argument. */
typedef struct srv_sys_request_callbacks {
    void *context;
    srv_write_fn (*start_response)(void *context, const char *status, const srv_header *headers,
                                   size_t header_count, const srv_exc_info *exc_info);
    int (*write)(void *context, const void *data, size_t len);
    ssize_t (*read)(void *context, void *buf, size_t n);
    void (*error)(void *context, const char *msg, size_t len);
} srv_sys_request_callbacks;

/** The plain C function pointers an application receives, bound to one slot. */
typedef struct srv_sys_request_closures {
    srv_start_response_fn start_response;
    srv_write_fn write;
    ssize_t (*read)(void *buf, size_t n);
    void (*error)(const char *msg, size_t len);
    void *state; /* owned by CSrvSystem */
} srv_sys_request_closures;

/**
 * Creates the four closures of a request slot. They live as long as the slot (slots are
 * pooled and reused, so closures are made once, never per request). Returns 0 or -1.
 */
int srv_sys_closures_create(const srv_sys_request_callbacks *callbacks,
                            srv_sys_request_closures *out);

/**
 * Calls `app` for the slot of `closures` the way a worker without --threads does: one call
 * at a time per process. start_response and write are then plain functions that reach the
 * slot's callbacks for the duration of the call (and refuse after it); input.read and
 * errors.write are the closures, as always. Returns what the app returned.
 */
int srv_sys_call_inline(srv_app_fn app, const srv_sys_request_closures *closures,
                        const srv_environ *environ, srv_body *body);

#endif
