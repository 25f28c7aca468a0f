/*
 * mixed: an open-loop HTTP/1.1 load of two streams at fixed rates, for the head-of-line
 * blocking test of `make bench`. Fast requests (GET FAST_PATH) go out at FAST_RATE per
 * second and slow ones (GET SLOW_PATH, an application call that blocks) at SLOW_RATE, each
 * stream on keep-alive connections of its own. Open loop: a request's latency runs from the
 * moment it was due, not from when a connection was free to send it, so a server that
 * stalls is charged for every request that waited (no coordinated omission).
 *
 * Prints one line: fast requests' count, p50, p99, p99.9 and max in ms, the slow ones'
 * count and p50 (requests due in the first 0.5 s are left out), and the errors: requests not answered (a connection closed under them, or
 * no answer 30 s after the end) and answers other than 200.
 *
 * Usage: mixed PORT SECONDS FAST_RATE FAST_PATH FAST_CONNS SLOW_RATE SLOW_PATH SLOW_CONNS
 * Build: cc -O2 -o mixed mixed.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    double rate;            /* requests per second */
    const char *path;
    char request[512];
    size_t request_len;
    long due;               /* requests scheduled so far */
    long queued;            /* due but not yet sent: waiting for a free connection */
    double *latencies;      /* ms, one per answered request */
    long answered, capacity;
    long warmup;            /* answered, but due in the first WARMUP seconds: not counted */
    double *pending_due;    /* ring of due times of queued requests */
    long ring_head, ring_size;
} stream;

typedef struct {
    int fd;
    stream *s;
    int busy;               /* a request is out */
    double due;             /* when that request was due */
    char buf[65536];
    size_t have;
} conn;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Requests due in the first half second are answered but not counted: the servers that
 * read a request as soon as they accept meet every connection opened at once there. */
#define WARMUP 0.5

static int port;
static long errors;

static int open_conn(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("mixed: connect");
        exit(1);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void send_request(int ep, conn *c, double due) {
    if (c->fd < 0) {  /* connections are opened when there is a request to send */
        c->fd = open_conn();
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    c->busy = 1;
    c->due = due;
    c->have = 0;
    if (write(c->fd, c->s->request, c->s->request_len) != (ssize_t)c->s->request_len)
        c->busy = 0;  /* lost: counted among the unanswered at the end */
}

static void record(stream *s, double ms) {
    if (s->answered == s->capacity) {
        s->capacity = s->capacity ? s->capacity * 2 : 4096;
        s->latencies = realloc(s->latencies, (size_t)s->capacity * sizeof *s->latencies);
    }
    s->latencies[s->answered++] = ms;
}

/* A whole response in c->buf: its length, or 0 when more is needed. *closes: it said
 * Connection: close (Gunicorn's sync worker does after every response). */
static size_t response_length(conn *c, int *closes) {
    char *end = memmem(c->buf, c->have, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t head = (size_t)(end - c->buf) + 4, body = 0;
    *closes = 0;
    for (char *p = c->buf; p < end; p++) {
        if (p != c->buf && p[-1] != '\n') continue;
        if (strncasecmp(p, "content-length:", 15) == 0) body = (size_t)strtoul(p + 15, NULL, 10);
        if (strncasecmp(p, "connection:", 11) == 0 && strncasecmp(p + 11 + strspn(p + 11, " "), "close", 5) == 0)
            *closes = 1;
    }
    return c->have >= head + body ? head + body : 0;
}

/* A connection closed (by the server, or after Connection: close): the next request on it
 * opens a new one. An idle connection opened in advance would hold a worker of a server
 * that reads a request as soon as it accepts (Gunicorn's sync worker) until it is used. */
static void drop(int ep, conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->busy = 0;
    c->have = 0;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(stream *s, double p) {
    if (s->answered == 0) return 0;
    long i = (long)(p / 100.0 * (double)(s->answered - 1) + 0.5);
    return s->latencies[i];
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: mixed PORT SECONDS FAST_RATE FAST_PATH FAST_CONNS SLOW_RATE SLOW_PATH SLOW_CONNS\n");
        return 2;
    }
    port = atoi(argv[1]);
    double seconds = atof(argv[2]);
    stream st[2] = {{.rate = atof(argv[3]), .path = argv[4]}, {.rate = atof(argv[6]), .path = argv[7]}};
    int nconn[2] = {atoi(argv[5]), atoi(argv[8])};
    int total = nconn[0] + nconn[1];
    conn *conns = calloc((size_t)total, sizeof *conns);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    for (int k = 0, i = 0; k < 2; k++) {
        stream *s = &st[k];
        s->request_len = (size_t)snprintf(s->request, sizeof s->request,
                                          "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", s->path);
        s->ring_size = 1 << 20;
        s->pending_due = malloc((size_t)s->ring_size * sizeof(double));
        /* All at once, as a load tester opens them; one closed later is opened again only
         * when a request needs it. */
        for (int j = 0; j < nconn[k]; j++, i++) {
            conns[i].fd = open_conn();
            conns[i].s = s;
            struct epoll_event e = {.events = EPOLLIN, .data.ptr = &conns[i]};
            epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &e);
        }
    }
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    struct epoll_event te = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &te);

    double start = now_s() + 0.05, stop = start + seconds;
    struct epoll_event events[256];
    for (;;) {
        double t = now_s();
        /* Schedule what is due, and send it on a free connection of its stream. */
        double next = stop;
        for (int k = 0; k < 2; k++) {
            stream *s = &st[k];
            if (s->rate <= 0) continue;
            for (;;) {
                double due = start + (double)s->due / s->rate;
                if (due > t || due >= stop) {
                    if (due < next) next = due;
                    break;
                }
                s->pending_due[(s->ring_head + s->queued++) % s->ring_size] = due;
                s->due++;
            }
            /* Round robin over the stream's free connections: a load spread over all of
             * them, as a pool of clients would, not one connection that is always free. */
            static int next_conn;
            for (int n = 0; n < total && s->queued > 0; n++) {
                int i = (next_conn + n) % total;
                if (conns[i].s != s || conns[i].busy) continue;
                next_conn = i + 1;
                double due = s->pending_due[s->ring_head];
                s->ring_head = (s->ring_head + 1) % s->ring_size;
                s->queued--;
                send_request(ep, &conns[i], due);
            }
        }
        int outstanding = 0;
        for (int i = 0; i < total; i++) outstanding |= conns[i].busy;
        if (t >= stop && !outstanding) break;
        if (t >= stop + 30) break;  /* answers that never come count as errors below */
        struct itimerspec when = {0};
        double at = next < stop ? next : t + 0.01;
        when.it_value.tv_sec = (time_t)at;
        when.it_value.tv_nsec = (long)((at - (double)(time_t)at) * 1e9);
        timerfd_settime(tfd, TFD_TIMER_ABSTIME, &when, NULL);
        int n = epoll_wait(ep, events, 256, 100);
        for (int e = 0; e < n; e++) {
            conn *c = events[e].data.ptr;
            if (!c) {
                uint64_t x;
                ssize_t r = read(tfd, &x, sizeof x);
                (void)r;
                continue;
            }
            ssize_t r = read(c->fd, c->buf + c->have, sizeof c->buf - c->have);
            if (r <= 0) {
                if (r < 0 && errno == EINTR) continue;
                /* Closed: its request, if one was out, counts among the unanswered. */
                drop(ep, c);
                continue;
            }
            c->have += (size_t)r;
            int closes = 0;
            size_t len = response_length(c, &closes);
            if (len == 0) continue;
            if (strncmp(c->buf, "HTTP/1.1 200", 12) != 0 && strncmp(c->buf, "HTTP/1.0 200", 12) != 0) errors++;
            if (c->due >= start + WARMUP) record(c->s, (now_s() - c->due) * 1000.0);
            else c->s->warmup++;
            c->busy = 0;
            c->have = 0;
            if (closes) drop(ep, c);
        }
    }
    for (int k = 0; k < 2; k++) {
        errors += st[k].due - st[k].answered - st[k].warmup;
        qsort(st[k].latencies, (size_t)st[k].answered, sizeof(double), cmp);
    }
    printf("fast %ld p50 %.3f p99 %.3f p99.9 %.3f max %.3f ms; slow %ld p50 %.1f ms; errors %ld\n",
           st[0].answered, pct(&st[0], 50), pct(&st[0], 99), pct(&st[0], 99.9),
           st[0].answered ? st[0].latencies[st[0].answered - 1] : 0.0, st[1].answered, pct(&st[1], 50), errors);
    return 0;
}
