/*
 * tables: a correct application (libtables.so) that reports what the conformance plugin
 * cannot, for Tests/integration/test_gateway_tables.py, which walks the tables of
 * PluginSDK/GATEWAY.md. It routes on the query parameter `op`, so it answers on any path.
 *
 *   op=sizes                 JSON: the size fields srv set, beside sizeof as compiled here
 *   op=stats                 JSON: what this process saw: load calls and threads, the
 *                            threads srv_gateway_app, next and close ran on, concurrency,
 *                            ctx and fd checks in close
 *   op=reset                 clears the thread sets and the concurrency maximum
 *   op=sleep&ms=N            sleeps N ms inside srv_gateway_app (counts concurrency)
 *   op=overwrite-headers     status and headers from buffers scribbled right after
 *                            start_response returns
 *   op=overwrite-write&kb=N  write() from one buffer scribbled after each call
 *   op=overwrite-exc-info    exc_info whose message is scribbled after the call
 *   op=iter-environ&n=N&pad=P  iterator with close; every chunk is built in `next` from
 *                            environ, headers, extensions and one byte of input->read,
 *                            and the first `next` writes to errors
 *   op=close-scribbles&kb=N  N KiB bytes body whose close zeroes it before freeing it
 *   op=file&path=P&cl=N      file body (Content-Length N when given); close checks that
 *                            the fd is still open
 *   op=ctx-tag&kind=bytes|iter  ctx is a tag that is not a valid pointer
 *   op=head-cl               Content-Length 6 and "hello\n"; for HEAD no body at all
 *   op=bad-kind              body kind 42, with a close
 *   op=twice, op=twice-after-commit, op=exc-after-commit, op=bad-status&status=S,
 *   op=bad-header&which=space|cr|lf, op=keep-write, op=stale-write,
 *   op=error-after-commit, op=write-cl-mismatch
 *                            one rule each; what the gateway call returned goes to errors
 *
 * Built with -DTABLES_ANONYMOUS (libtablesanon.so) its descriptor has a NULL name and
 * version; with -DTABLES_SERIAL (libtablesserial.so) it does not set SRV_FLAG_THREAD_SAFE.
 */
#define _GNU_SOURCE

#include <srv/gateway.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int tables_load(const srv_server_info *info, char *error, size_t error_size);

#ifdef TABLES_SERIAL
#define TABLES_FLAGS 0u
#else
#define TABLES_FLAGS SRV_FLAG_THREAD_SAFE
#endif

#ifdef TABLES_ANONYMOUS
SRV_DESCRIPTOR(NULL, NULL, TABLES_FLAGS, tables_load, NULL);
#else
SRV_DESCRIPTOR("tables", "1.0.0", TABLES_FLAGS, tables_load, NULL);
#endif

#define LIT(s) {(s), sizeof(s) - 1}
#define HDR(name, value) {LIT(name), LIT(value)}
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static const srv_header text_plain[] = {HDR("Content-Type", "text/plain")};

/* ---------------------------------------------------------------------------------- */
/* Process-wide observations, under one mutex                                         */
/* ---------------------------------------------------------------------------------- */

#define MAX_TIDS 32

typedef struct tid_set {
    long tids[MAX_TIDS];
    int count;
} tid_set;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int load_calls;
static long load_tid;
static int first_call_seen, load_before_first_call;
static unsigned long app_calls, closes, ctx_ok, ctx_bad, fd_open_at_close, fd_closed_at_close;
static int concurrent, max_concurrent;
static tid_set app_tids, next_tids, close_tids;
static srv_write_fn kept_write;

static long current_tid(void) { return (long)syscall(SYS_gettid); }

static void tid_add(tid_set *set, long tid) {
    int i;
    for (i = 0; i < set->count; i++)
        if (set->tids[i] == tid) return;
    if (set->count < MAX_TIDS) set->tids[set->count++] = tid;
}

static void note_tid(tid_set *set) {
    long tid = current_tid();
    pthread_mutex_lock(&lock);
    tid_add(set, tid);
    pthread_mutex_unlock(&lock);
}

static void note_close(void) {
    long tid = current_tid();
    pthread_mutex_lock(&lock);
    closes++;
    tid_add(&close_tids, tid);
    pthread_mutex_unlock(&lock);
}

static int tables_load(const srv_server_info *info, char *error, size_t error_size) {
    (void)info;
    (void)error;
    (void)error_size;
    pthread_mutex_lock(&lock);
    load_calls++;
    load_tid = current_tid();
    pthread_mutex_unlock(&lock);
    return SRV_OK;
}

/* ---------------------------------------------------------------------------------- */
/* Helpers                                                                            */
/* ---------------------------------------------------------------------------------- */

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The percent-decoded value of query parameter `key` in out[size]; 1 when found. */
static int param(srv_str qs, const char *key, char *out, size_t size) {
    size_t klen = strlen(key), i = 0;
    while (i < qs.len) {
        size_t start = i, end, eq;
        while (i < qs.len && qs.ptr[i] != '&') i++;
        end = i++;
        for (eq = start; eq < end && qs.ptr[eq] != '='; eq++) {
        }
        if (eq - start == klen && memcmp(qs.ptr + start, key, klen) == 0) {
            size_t o = 0, j;
            for (j = eq < end ? eq + 1 : end; j < end; j++) {
                int c = (unsigned char)qs.ptr[j];
                if (c == '%' && j + 2 < end && hexval(qs.ptr[j + 1]) >= 0 && hexval(qs.ptr[j + 2]) >= 0) {
                    c = hexval(qs.ptr[j + 1]) * 16 + hexval(qs.ptr[j + 2]);
                    j += 2;
                }
                if (o + 1 >= size) return 0;
                out[o++] = (char)c;
            }
            out[o] = '\0';
            return 1;
        }
    }
    return 0;
}

static long long param_int(srv_str qs, const char *key, long long def) {
    char text[32], *end;
    long long v;
    if (!param(qs, key, text, sizeof text) || text[0] == '\0') return def;
    v = strtoll(text, &end, 10);
    return *end == '\0' ? v : def;
}

static int is(const char *a, const char *b) { return strcmp(a, b) == 0; }

static void close_free(void *ctx) {
    free(ctx);
    note_close();
}

/* A text/plain response with a malloc'd body that close frees. */
static int respond_text(srv_start_response_fn start_response, srv_body *body, const char *status,
                        const char *text) {
    size_t len = strlen(text);
    char *copy = (char *)malloc(len + 1);
    if (copy == NULL) return SRV_ERROR;
    memcpy(copy, text, len + 1);
    if (start_response(status, text_plain, COUNT(text_plain), NULL) == NULL) {
        free(copy);
        return SRV_ERROR;
    }
    body->kind = SRV_BODY_BYTES;
    body->data = copy;
    body->len = len;
    body->ctx = copy;
    body->close = close_free;
    return SRV_OK;
}

/* One line on wsgi.errors: "tables: WHAT". */
static void log_line(const srv_environ *env, const char *what) {
    char line[256];
    int n = snprintf(line, sizeof line, "tables: %s", what);
    if (n > 0) env->errors->write(line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

static void put_tids(char **p, const char *name, const tid_set *set) {
    int i;
    *p += sprintf(*p, ",\"%s\":[", name);
    for (i = 0; i < set->count; i++) *p += sprintf(*p, "%s%ld", i ? "," : "", set->tids[i]);
    *p += sprintf(*p, "]");
}

/* ---------------------------------------------------------------------------------- */
/* Reports                                                                            */
/* ---------------------------------------------------------------------------------- */

static int route_sizes(const srv_environ *env, srv_start_response_fn start_response, srv_body *body) {
    char text[512];
    snprintf(text, sizeof text,
             "{\"environ\":%zu,\"environ_compiled\":%zu,\"input\":%zu,\"input_compiled\":%zu,"
             "\"errors\":%zu,\"errors_compiled\":%zu,\"body\":%zu,\"body_compiled\":%zu,"
             "\"body_kind\":%d,\"multithread\":%d,\"multiprocess\":%d,\"run_once\":%d}\n",
             env->size, sizeof(srv_environ), env->input->size, sizeof(srv_input), env->errors->size,
             sizeof(srv_errors), body->size, sizeof(srv_body), body->kind, env->multithread,
             env->multiprocess, env->run_once);
    return respond_text(start_response, body, "200 OK", text);
}

static int route_stats(srv_start_response_fn start_response, srv_body *body) {
    char text[4096], *p = text;
    pthread_mutex_lock(&lock);
    p += sprintf(p,
                 "{\"pid\":%ld,\"load_calls\":%d,\"load_tid\":%ld,\"load_before_first_call\":%s,"
                 "\"app_calls\":%lu,\"closes\":%lu,\"ctx_ok\":%lu,\"ctx_bad\":%lu,"
                 "\"fd_open_at_close\":%lu,\"fd_closed_at_close\":%lu,\"max_concurrent\":%d",
                 (long)getpid(), load_calls, load_tid, load_before_first_call ? "true" : "false",
                 app_calls, closes, ctx_ok, ctx_bad, fd_open_at_close, fd_closed_at_close,
                 max_concurrent);
    put_tids(&p, "app_tids", &app_tids);
    put_tids(&p, "next_tids", &next_tids);
    put_tids(&p, "close_tids", &close_tids);
    pthread_mutex_unlock(&lock);
    sprintf(p, "}\n");
    return respond_text(start_response, body, "200 OK", text);
}

/* ---------------------------------------------------------------------------------- */
/* Lifetimes: what the application gives srv only during a call                        */
/* ---------------------------------------------------------------------------------- */

static int route_overwrite_headers(srv_start_response_fn start_response, srv_body *body) {
    char status[32];
    char *strings = (char *)malloc(256);
    srv_header *headers = (srv_header *)malloc(2 * sizeof *headers);
    srv_write_fn w;
    if (strings == NULL || headers == NULL) {
        free(strings);
        free(headers);
        return SRV_ERROR;
    }
    strcpy(status, "201 Original");
    memcpy(strings, "Content-Typetext/plainX-Originalkept-value", 42);
    headers[0].name.ptr = strings, headers[0].name.len = 12;
    headers[0].value.ptr = strings + 12, headers[0].value.len = 10;
    headers[1].name.ptr = strings + 22, headers[1].name.len = 10;
    headers[1].value.ptr = strings + 32, headers[1].value.len = 10;
    w = start_response(status, headers, 2, NULL);
    /* Valid "only during the call": scribble on everything at once. */
    memset(status, 'X', sizeof status - 1);
    status[sizeof status - 1] = '\0';
    memset(strings, 'X', 256);
    memset(headers, 0, 2 * sizeof *headers);
    free(strings);
    free(headers);
    if (w == NULL) return SRV_ERROR;
    body->kind = SRV_BODY_BYTES;
    body->data = "headers were copied\n";
    body->len = 20;
    return SRV_OK;
}

static int route_overwrite_write(const srv_environ *env, srv_start_response_fn start_response) {
    long long kb = param_int(env->query_string, "kb", 3072);
    size_t big = (size_t)(kb < 0 ? 0 : kb) * 1024, i;
    char *buf;
    srv_write_fn w = start_response("200 OK", text_plain, COUNT(text_plain), NULL);
    if (w == NULL || (buf = (char *)malloc(big + 16)) == NULL) return SRV_ERROR;
    memcpy(buf, "one\n", 4);
    if (w(buf, 4) != SRV_OK) goto fail;
    memset(buf, 'X', 16);
    memcpy(buf, "two\n", 4);
    if (w(buf, 4) != SRV_OK) goto fail;
    memset(buf, 'X', 16);
    for (i = 0; i < big; i++) buf[i] = (char)('a' + i % 26);
    if (big > 0 && w(buf, big) != SRV_OK) goto fail;
    memset(buf, 'X', big);
    free(buf);
    return SRV_OK;
fail:
    free(buf);
    return SRV_ERROR;
}

static int route_overwrite_exc_info(srv_start_response_fn start_response, srv_body *body) {
    static const char original[] = "exc_info message as given during the call";
    srv_exc_info *exc = (srv_exc_info *)malloc(sizeof *exc);
    char *message = (char *)malloc(sizeof original);
    srv_write_fn w;
    if (exc == NULL || message == NULL) {
        free(exc);
        free(message);
        return SRV_ERROR;
    }
    memcpy(message, original, sizeof original);
    exc->size = sizeof *exc;
    exc->message = message;
    if (start_response("200 OK", text_plain, COUNT(text_plain), NULL) == NULL) {
        free(exc);
        free(message);
        return SRV_ERROR;
    }
    w = start_response("503 Service Unavailable", text_plain, COUNT(text_plain), exc);
    memset(message, 'X', sizeof original - 1);
    exc->message = NULL;
    free(message);
    free(exc);
    if (w == NULL) return SRV_ERROR;
    body->kind = SRV_BODY_BYTES;
    body->data = "replaced\n";
    body->len = 9;
    return SRV_OK;
}

/* ---------------------------------------------------------------------------------- */
/* Iterators that use environ from `next`                                             */
/* ---------------------------------------------------------------------------------- */

#define ITER_MAGIC 0x7ab1e5u

typedef struct environ_iter {
    unsigned magic;
    const srv_environ *env;
    long long left, index;
    size_t pad;
    char *chunk;
} environ_iter;

static srv_str header_value(const srv_header *headers, size_t count, const char *name) {
    size_t i, n = strlen(name);
    srv_str none = {"", 0};
    for (i = 0; i < count; i++)
        if (headers[i].name.len == n && strncasecmp(headers[i].name.ptr, name, n) == 0) return headers[i].value;
    return none;
}

static int environ_next(void *ctx, const void **data, size_t *len) {
    environ_iter *it = (environ_iter *)ctx;
    const srv_environ *env = it->env;
    srv_str tag, id;
    char byte = '-';
    size_t n;
    note_tid(&next_tids);
    if (it->magic != ITER_MAGIC) return SRV_ERROR;
    if (it->left <= 0) return 0;
    if (it->index == 0) log_line(env, "next saw its environ");
    if (env->input->read(&byte, 1) != 1) byte = '-';
    tag = header_value(env->headers, env->header_count, "X-Tag");
    id = header_value(env->extensions, env->extension_count, "srv.request_id");
    n = (size_t)snprintf(it->chunk, 1024, "%lld q=%.*s p=%.*s tag=%.*s id=%.*s byte=%c ", it->index,
                         (int)env->query_string.len, env->query_string.ptr, (int)env->path_info.len,
                         env->path_info.ptr, (int)tag.len, tag.ptr, (int)id.len, id.ptr, byte);
    if (n > 1023) n = 1023;
    memset(it->chunk + n, '.', it->pad);
    it->chunk[n + it->pad] = '\n';
    *data = it->chunk;
    *len = n + it->pad + 1;
    it->left--;
    it->index++;
    return 1;
}

static void environ_close(void *ctx) {
    environ_iter *it = (environ_iter *)ctx;
    pthread_mutex_lock(&lock);
    if (it->magic == ITER_MAGIC) ctx_ok++;
    else ctx_bad++;
    pthread_mutex_unlock(&lock);
    it->magic = 0;
    free(it->chunk);
    free(it);
    note_close();
}

static int route_iter_environ(const srv_environ *env, srv_start_response_fn start_response, srv_body *body) {
    long long n = param_int(env->query_string, "n", 16), pad = param_int(env->query_string, "pad", 64);
    environ_iter *it;
    if (n < 0) n = 16;
    if (pad < 0 || pad > (1 << 20)) pad = 64;
    if ((it = (environ_iter *)malloc(sizeof *it)) == NULL) return SRV_ERROR;
    if ((it->chunk = (char *)malloc(1024 + (size_t)pad + 1)) == NULL) {
        free(it);
        return SRV_ERROR;
    }
    it->magic = ITER_MAGIC;
    it->env = env;
    it->left = n;
    it->index = 0;
    it->pad = (size_t)pad;
    if (start_response("200 OK", text_plain, COUNT(text_plain), NULL) == NULL) {
        free(it->chunk);
        free(it);
        return SRV_ERROR;
    }
    body->kind = SRV_BODY_ITER;
    body->next = environ_next;
    body->ctx = it;
    body->close = environ_close;
    return SRV_OK;
}

/* ---------------------------------------------------------------------------------- */
/* Body fields: bytes released by close, files, ctx                                   */
/* ---------------------------------------------------------------------------------- */

typedef struct scribbled {
    size_t len;
    unsigned char data[];
} scribbled;

static void close_scribble(void *ctx) {
    scribbled *s = (scribbled *)ctx;
    memset(s->data, 0, s->len);
    free(s);
    note_close();
}

static int route_close_scribbles(const srv_environ *env, srv_start_response_fn start_response, srv_body *body) {
    long long kb = param_int(env->query_string, "kb", 8192);
    size_t len = (size_t)(kb < 0 ? 0 : kb) * 1024, i;
    scribbled *s = (scribbled *)malloc(sizeof *s + len);
    if (s == NULL) return SRV_ERROR;
    s->len = len;
    for (i = 0; i < len; i++) s->data[i] = (unsigned char)(i % 251);
    if (start_response("200 OK", text_plain, COUNT(text_plain), NULL) == NULL) {
        free(s);
        return SRV_ERROR;
    }
    body->kind = SRV_BODY_BYTES;
    body->data = s->data;
    body->len = len;
    body->ctx = s;
    body->close = close_scribble;
    return SRV_OK;
}

static void close_fd_checked(void *ctx) {
    int fd = (int)(intptr_t)ctx;
    int open_now = fcntl(fd, F_GETFD) != -1;
    pthread_mutex_lock(&lock);
    if (open_now) fd_open_at_close++;
    else fd_closed_at_close++;
    pthread_mutex_unlock(&lock);
    if (open_now) close(fd);
    note_close();
}

static int route_file(const srv_environ *env, srv_start_response_fn start_response, srv_body *body) {
    char path[4096], cl[32];
    srv_header headers[2];
    size_t count = 1;
    int fd;
    headers[0].name.ptr = "Content-Type", headers[0].name.len = 12;
    headers[0].value.ptr = "application/octet-stream", headers[0].value.len = 24;
    if (!param(env->query_string, "path", path, sizeof path)) return SRV_ERROR;
    if (param(env->query_string, "cl", cl, sizeof cl)) {
        headers[1].name.ptr = "Content-Length", headers[1].name.len = 14;
        headers[1].value.ptr = cl, headers[1].value.len = strlen(cl);
        count = 2;
    }
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) return respond_text(start_response, body, "404 Not Found", "no such file\n");
    if (start_response("200 OK", headers, count, NULL) == NULL) {
        close(fd);
        return SRV_ERROR;
    }
    body->kind = SRV_BODY_FILE;
    body->fd = fd;
    body->offset = param_int(env->query_string, "offset", 0);
    body->length = param_int(env->query_string, "length", -1);
    body->ctx = (void *)(intptr_t)fd;
    body->close = close_fd_checked;
    return SRV_OK;
}

/* ctx as a tag that is not a pointer anyone may follow: an odd address in the first page. */
#define TAG_SLOTS 64
static int tag_steps[TAG_SLOTS];
static unsigned tag_counter;

static void *tag_for(unsigned slot) { return (void *)(uintptr_t)(2u * slot + 1u); }

static int tag_slot(void *ctx, unsigned *slot) {
    uintptr_t v = (uintptr_t)ctx;
    if (v % 2 != 1 || v / 2 >= TAG_SLOTS) return 0;
    *slot = (unsigned)(v / 2);
    return 1;
}

static void tag_check(void *ctx) {
    unsigned slot;
    pthread_mutex_lock(&lock);
    if (tag_slot(ctx, &slot)) ctx_ok++;
    else ctx_bad++;
    pthread_mutex_unlock(&lock);
}

static int tag_next(void *ctx, const void **data, size_t *len) {
    static const char chunk[] = "tagged chunk\n";
    unsigned slot;
    int step;
    note_tid(&next_tids);
    if (!tag_slot(ctx, &slot)) {
        tag_check(ctx);
        return SRV_ERROR;
    }
    pthread_mutex_lock(&lock);
    step = tag_steps[slot]++;
    pthread_mutex_unlock(&lock);
    if (step >= 3) return 0;
    *data = chunk;
    *len = sizeof chunk - 1;
    return 1;
}

static void tag_close(void *ctx) {
    tag_check(ctx);
    note_close();
}

static int route_ctx_tag(const srv_environ *env, srv_start_response_fn start_response, srv_body *body) {
    char kind[16] = "bytes";
    unsigned slot;
    param(env->query_string, "kind", kind, sizeof kind);
    pthread_mutex_lock(&lock);
    slot = tag_counter++ % TAG_SLOTS;
    tag_steps[slot] = 0;
    pthread_mutex_unlock(&lock);
    if (start_response("200 OK", text_plain, COUNT(text_plain), NULL) == NULL) return SRV_ERROR;
    if (is(kind, "iter")) {
        body->kind = SRV_BODY_ITER;
        body->next = tag_next;
    } else {
        body->kind = SRV_BODY_BYTES;
        body->data = "tagged bytes\n";
        body->len = 13;
    }
    body->ctx = tag_for(slot);
    body->close = tag_close;
    return SRV_OK;
}

/* ---------------------------------------------------------------------------------- */
/* Rules broken on purpose; what each gateway call returned goes to wsgi.errors        */
/* ---------------------------------------------------------------------------------- */

static const char *result(srv_write_fn w) { return w == NULL ? "NULL" : "write"; }

static void owned_body(srv_body *body, const char *text) {
    size_t len = strlen(text);
    char *copy = (char *)malloc(len + 1);
    if (copy == NULL) return;
    memcpy(copy, text, len + 1);
    body->kind = SRV_BODY_BYTES;
    body->data = copy;
    body->len = len;
    body->ctx = copy;
    body->close = close_free;
}

static int route_rule(const char *op, const srv_environ *env, srv_start_response_fn start_response,
                      srv_body *body) {
    char line[200];
    srv_exc_info exc;
    srv_write_fn w;
    exc.size = sizeof exc;
    exc.message = "tables: too late";

    if (is(op, "twice")) {
        start_response("200 OK", text_plain, COUNT(text_plain), NULL);
        w = start_response("201 Created", text_plain, COUNT(text_plain), NULL);
        snprintf(line, sizeof line, "twice: the second start_response returned %s", result(w));
        log_line(env, line);
        owned_body(body, "never sent\n");
        return SRV_OK;
    }
    if (is(op, "twice-after-commit")) {
        w = start_response("200 OK", text_plain, COUNT(text_plain), NULL);
        if (w == NULL || w("partial", 7) != SRV_OK) return SRV_ERROR;
        w = start_response("201 Created", text_plain, COUNT(text_plain), NULL);
        snprintf(line, sizeof line, "twice-after-commit: the second start_response returned %s", result(w));
        log_line(env, line);
        owned_body(body, "never sent\n");
        return SRV_OK;
    }
    if (is(op, "exc-after-commit")) {
        w = start_response("200 OK", text_plain, COUNT(text_plain), NULL);
        if (w == NULL || w("partial", 7) != SRV_OK) return SRV_ERROR;
        w = start_response("500 Oops", text_plain, COUNT(text_plain), &exc);
        snprintf(line, sizeof line, "exc-after-commit: start_response with exc_info returned %s", result(w));
        log_line(env, line);
        owned_body(body, "never sent\n");
        return SRV_OK;
    }
    if (is(op, "bad-status")) {
        char status[64] = "abc";
        param(env->query_string, "status", status, sizeof status);
        w = start_response(status, text_plain, COUNT(text_plain), NULL);
        snprintf(line, sizeof line, "bad-status: start_response returned %s", result(w));
        log_line(env, line);
        owned_body(body, "never sent\n");
        return SRV_OK;
    }
    if (is(op, "bad-header")) {
        char which[16] = "space";
        srv_header h[2];
        h[0] = text_plain[0];
        param(env->query_string, "which", which, sizeof which);
        if (is(which, "cr")) {
            h[1].name.ptr = "X-Bad", h[1].name.len = 5, h[1].value.ptr = "a\rb", h[1].value.len = 3;
        } else if (is(which, "lf")) {
            h[1].name.ptr = "X-Bad", h[1].name.len = 5, h[1].value.ptr = "a\nInjected: 1", h[1].value.len = 13;
        } else if (is(which, "empty")) {
            h[1].name.ptr = "", h[1].name.len = 0, h[1].value.ptr = "1", h[1].value.len = 1;
        } else {
            h[1].name.ptr = "Bad Name", h[1].name.len = 8, h[1].value.ptr = "1", h[1].value.len = 1;
        }
        w = start_response("200 OK", h, 2, NULL);
        snprintf(line, sizeof line, "bad-header %s: start_response returned %s", which, result(w));
        log_line(env, line);
        owned_body(body, "never sent\n");
        return SRV_OK;
    }
    if (is(op, "keep-write")) {
        /* The app's bug on purpose: keeps `write` beyond its lifetime, for stale-write. */
        w = start_response("200 OK", text_plain, COUNT(text_plain), NULL);
        pthread_mutex_lock(&lock);
        kept_write = w;
        pthread_mutex_unlock(&lock);
        body->kind = SRV_BODY_BYTES;
        body->data = "kept\n";
        body->len = 5;
        return w == NULL ? SRV_ERROR : SRV_OK;
    }
    if (is(op, "stale-write")) {
        srv_write_fn kept;
        int rc;
        pthread_mutex_lock(&lock);
        kept = kept_write;
        pthread_mutex_unlock(&lock);
        if (kept == NULL) return respond_text(start_response, body, "409 Conflict", "no kept write\n");
        rc = kept("stale", 5);
        snprintf(line, sizeof line, "stale-write: write before start_response returned %s",
                 rc == SRV_ERROR ? "SRV_ERROR" : rc == SRV_OK ? "SRV_OK" : "other");
        log_line(env, line);
        w = start_response("200 OK", text_plain, COUNT(text_plain), NULL);
        owned_body(body, "never sent\n");
        return SRV_OK;
    }
    if (is(op, "error-after-commit")) {
        w = start_response("200 OK", text_plain, COUNT(text_plain), NULL);
        if (w != NULL) w("partial", 7);
        owned_body(body, "never sent\n");
        return SRV_ERROR;
    }
    if (is(op, "write-cl-mismatch")) {
        static const srv_header h[] = {HDR("Content-Type", "text/plain"), HDR("Content-Length", "100")};
        w = start_response("200 OK", h, COUNT(h), NULL);
        if (w == NULL) return SRV_ERROR;
        w("short", 5);
        return SRV_OK;
    }
    if (is(op, "bad-kind")) {
        if (start_response("200 OK", text_plain, COUNT(text_plain), NULL) == NULL) return SRV_ERROR;
        owned_body(body, "never sent\n");
        body->kind = 42;
        return SRV_OK;
    }
    return respond_text(start_response, body, "404 Not Found", "no such op\n");
}

/* ---------------------------------------------------------------------------------- */
/* The entry point                                                                    */
/* ---------------------------------------------------------------------------------- */

int srv_gateway_app(const srv_environ *environ, srv_start_response_fn start_response, srv_body *body) {
    const srv_environ *env = environ;
    char op[64] = "";
    int rc;
    long tid = current_tid();

    pthread_mutex_lock(&lock);
    if (!first_call_seen) {
        first_call_seen = 1;
        load_before_first_call = load_calls == 1;
    }
    app_calls++;
    tid_add(&app_tids, tid);
    if (++concurrent > max_concurrent) max_concurrent = concurrent;
    pthread_mutex_unlock(&lock);

    param(env->query_string, "op", op, sizeof op);
    if (is(op, "sizes")) rc = route_sizes(env, start_response, body);
    else if (is(op, "stats")) rc = route_stats(start_response, body);
    else if (is(op, "reset")) {
        pthread_mutex_lock(&lock);
        app_tids.count = next_tids.count = close_tids.count = 0;
        max_concurrent = concurrent;
        pthread_mutex_unlock(&lock);
        rc = respond_text(start_response, body, "200 OK", "reset\n");
    } else if (is(op, "sleep")) {
        long long ms = param_int(env->query_string, "ms", 100);
        struct timespec ts;
        char text[96];
        ts.tv_sec = (time_t)(ms / 1000);
        ts.tv_nsec = (long)(ms % 1000) * 1000000L;
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
        snprintf(text, sizeof text, "slept pid %ld tid %ld\n", (long)getpid(), tid);
        rc = respond_text(start_response, body, "200 OK", text);
    } else if (is(op, "overwrite-headers")) rc = route_overwrite_headers(start_response, body);
    else if (is(op, "overwrite-write")) rc = route_overwrite_write(env, start_response);
    else if (is(op, "overwrite-exc-info")) rc = route_overwrite_exc_info(start_response, body);
    else if (is(op, "iter-environ")) rc = route_iter_environ(env, start_response, body);
    else if (is(op, "close-scribbles")) rc = route_close_scribbles(env, start_response, body);
    else if (is(op, "file")) rc = route_file(env, start_response, body);
    else if (is(op, "ctx-tag")) rc = route_ctx_tag(env, start_response, body);
    else if (is(op, "head-cl")) {
        static const srv_header h[] = {HDR("Content-Type", "text/plain"), HDR("Content-Length", "6")};
        rc = start_response("200 OK", h, COUNT(h), NULL) == NULL ? SRV_ERROR : SRV_OK;
        if (rc == SRV_OK && !(env->request_method.len == 4 && memcmp(env->request_method.ptr, "HEAD", 4) == 0)) {
            body->kind = SRV_BODY_BYTES;
            body->data = "hello\n";
            body->len = 6;
        }
    }
    else rc = route_rule(op, env, start_response, body);

    pthread_mutex_lock(&lock);
    concurrent--;
    pthread_mutex_unlock(&lock);
    return rc;
}
