/*
 * conformance: an srv application that exercises every part of the gateway spec
 * (srv/gateway.h, PluginSDK/GATEWAY.md). The integration tests drive it over HTTP; each
 * route below shows one rule, and the /error/... routes break one rule each on purpose.
 *
 * Build (Examples/Makefile does this, twice, as libconformance.so and libconformance2.so):
 *   cc -std=c99 -O2 -Wall -Wextra -pedantic -fPIC -fvisibility=hidden -shared \
 *      -I PluginSDK/C/include -DAPP_VERSION='"2.0.0"' -o libconformance.so \
 *      Examples/conformance/conformance.c -lpthread
 *
 * Routes (on PATH_INFO; QUERY_STRING values may be percent-encoded):
 *   /                        200 "conformance VERSION\n"
 *   /environ                 200 application/json dump of the environ
 *   /echo                    the request body, read 7 bytes at a time; X-Read-Calls counts
 *                            every read call including the final one that returned 0;
 *                            X-Input-Length is input->length
 *   /iter?n=N&size=S         iterator body: N chunks (3) of S bytes (5) of 'a'+(i%26)
 *   /big?mb=N                iterator body: N MiB (64) of 'x' in 64 KiB chunks
 *   /file?path=P&offset=O&length=L   SRV_BODY_FILE; 404 when open fails
 *   /write                   write("first\n"), write("second\n"), body "third\n"
 *   /status?code=N           status "N Custom", body "status N\n" (N is used verbatim)
 *   /exc-info                200 replaced by 503 through exc_info before anything is sent
 *   /read-past               reads past the end of the input: every extra read returns 0
 *   /errors                  one line on wsgi.errors
 *   /thread                  start_response, read, errors and write from another thread
 *   /sleep?ms=N              sleeps N ms
 *   /crash                   raise(SIGSEGV)
 *   /counter                 "pid P count C": C counts this process's /counter requests
 *   /loaded                  what the load hook saw
 *   /closes                  how many bodies got a close, and how many were closed
 *   /error/no-start-response, /error/twice, /error/bad-status, /error/bad-header,
 *   /error/bad-header-name, /error/hop-by-hop, /error/after-body, /error/return,
 *   /error/iter, /error/content-length, /error/iter-too-long
 *                            one broken rule each (see GATEWAY.md)
 *   anything else            404 "not found\n"
 *
 * Environment: SRV_CONFORMANCE_FAIL_LOAD makes the load hook fail;
 * SRV_CONFORMANCE_UNLOAD_FILE names a file the unload hook appends "unload PID\n" to.
 *
 * The app is SRV_FLAG_THREAD_SAFE: no route keeps unprotected shared state.
 */
#define _POSIX_C_SOURCE 200809L

#include <srv/gateway.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef APP_VERSION
#define APP_VERSION "1.0.0"
#endif

static int conformance_load(const srv_server_info *info, char *error, size_t error_size);
static void conformance_unload(void);

SRV_DESCRIPTOR("conformance", APP_VERSION, SRV_FLAG_THREAD_SAFE, conformance_load,
               conformance_unload);

/* ---------------------------------------------------------------------------------- */
/* Small helpers                                                                      */
/* ---------------------------------------------------------------------------------- */

#define LIT(s) {(s), sizeof(s) - 1}
#define HDR(name, value) {LIT(name), LIT(value)}
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static srv_str mkstr(const char *s) {
    srv_str r;
    r.ptr = s;
    r.len = strlen(s);
    return r;
}

static int str_is(srv_str s, const char *lit) {
    size_t n = strlen(lit);
    return s.len == n && memcmp(s.ptr, lit, n) == 0;
}

/* Process-wide counters, guarded by one mutex (the app is thread-safe). */
static pthread_mutex_t counters_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long long request_count;
static unsigned long long closes_set;
static unsigned long long closes_called;

static unsigned long long counter_add(unsigned long long *counter) {
    unsigned long long value;
    pthread_mutex_lock(&counters_lock);
    value = ++*counter;
    pthread_mutex_unlock(&counters_lock);
    return value;
}

/* Every close this app hands srv goes through set_close and calls note_closed, so that
 * /closes can show that srv calls close exactly once per body. */
static void set_close(srv_body *body, void (*close_fn)(void *), void *ctx) {
    body->close = close_fn;
    body->ctx = ctx;
    counter_add(&closes_set);
}

static void note_closed(void) { counter_add(&closes_called); }

static void close_free(void *ctx) {
    free(ctx);
    note_closed();
}

static void close_fd(void *ctx) {
    close((int)(intptr_t)ctx);
    note_closed();
}

/* ---------------------------------------------------------------------------------- */
/* Query strings                                                                      */
/* ---------------------------------------------------------------------------------- */

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Finds `key` in the query string and percent-decodes its value ('+' is a space) into
 * out[out_size]. Returns 1 when found, 0 when absent or too long. */
static int query_param(srv_str qs, const char *key, char *out, size_t out_size) {
    size_t klen = strlen(key), i = 0;
    while (i < qs.len) {
        size_t start = i, end, eq;
        while (i < qs.len && qs.ptr[i] != '&') i++;
        end = i++;
        eq = start;
        while (eq < end && qs.ptr[eq] != '=') eq++;
        if (eq - start == klen && memcmp(qs.ptr + start, key, klen) == 0) {
            size_t o = 0, j = eq < end ? eq + 1 : end;
            for (; j < end; j++) {
                int c = (unsigned char)qs.ptr[j];
                if (c == '+') {
                    c = ' ';
                } else if (c == '%' && j + 2 < end && hexval(qs.ptr[j + 1]) >= 0 &&
                           hexval(qs.ptr[j + 2]) >= 0) {
                    c = hexval(qs.ptr[j + 1]) * 16 + hexval(qs.ptr[j + 2]);
                    j += 2;
                }
                if (o + 1 >= out_size) return 0;
                out[o++] = (char)c;
            }
            out[o] = '\0';
            return 1;
        }
    }
    return 0;
}

/* A decimal integer parameter; `def` when absent or not a number. */
static long long query_int(srv_str qs, const char *key, long long def) {
    char text[32], *end;
    long long v;
    if (!query_param(qs, key, text, sizeof text) || text[0] == '\0') return def;
    errno = 0;
    v = strtoll(text, &end, 10);
    if (errno != 0 || *end != '\0') return def;
    return v;
}

/* ---------------------------------------------------------------------------------- */
/* Responses                                                                          */
/* ---------------------------------------------------------------------------------- */

/* Starts a response with one Content-Type header and a bytes body. When `owned`, data
 * was malloc'd and srv frees it through close. */
static int respond(srv_start_response_fn start_response, srv_body *body, const char *status,
                   const char *content_type, const void *data, size_t len, int owned) {
    srv_header headers[1];
    headers[0].name = mkstr("Content-Type");
    headers[0].value = mkstr(content_type);
    if (start_response(status, headers, COUNT(headers), NULL) == NULL) {
        if (owned) free((void *)data);
        return SRV_ERROR;
    }
    body->kind = SRV_BODY_BYTES;
    body->data = data;
    body->len = len;
    if (owned) set_close(body, close_free, (void *)data);
    return SRV_OK;
}

static int respond_static(srv_start_response_fn start_response, srv_body *body,
                          const char *status, const char *text) {
    return respond(start_response, body, status, "text/plain", text, strlen(text), 0);
}

#if defined(__GNUC__) || defined(__clang__)
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#else
#define PRINTF_LIKE(f, a)
#endif

/* A text/plain response formatted into a malloc'd body. */
static int respond_fmt(srv_start_response_fn start_response, srv_body *body, const char *status,
                       const char *fmt, ...) PRINTF_LIKE(4, 5);
static int respond_fmt(srv_start_response_fn start_response, srv_body *body, const char *status,
                       const char *fmt, ...) {
    va_list ap, ap2;
    int n;
    char *text;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || (text = (char *)malloc((size_t)n + 1)) == NULL) {
        va_end(ap2);
        return SRV_ERROR;
    }
    vsnprintf(text, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    return respond(start_response, body, status, "text/plain", text, (size_t)n, 1);
}

/* A malloc'd copy of a string literal, so that a rule-breaking route still hands srv a
 * body with a close (srv must call it exactly once in every case). */
static void owned_text_body(srv_body *body, const char *text) {
    size_t len = strlen(text);
    char *copy = (char *)malloc(len + 1);
    if (copy == NULL) return;
    memcpy(copy, text, len + 1);
    body->kind = SRV_BODY_BYTES;
    body->data = copy;
    body->len = len;
    set_close(body, close_free, copy);
}

/* ---------------------------------------------------------------------------------- */
/* A growable byte buffer                                                             */
/* ---------------------------------------------------------------------------------- */

typedef struct buffer {
    char *data;
    size_t len, cap;
    int failed;
} buffer;

static void buf_reserve(buffer *b, size_t extra) {
    size_t cap;
    char *p;
    if (b->failed || b->len + extra <= b->cap) return;
    cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    p = (char *)realloc(b->data, cap);
    if (p == NULL) {
        b->failed = 1;
        return;
    }
    b->data = p;
    b->cap = cap;
}

static void buf_put(buffer *b, const void *data, size_t len) {
    buf_reserve(b, len);
    if (b->failed) return;
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void buf_puts(buffer *b, const char *s) { buf_put(b, s, strlen(s)); }

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when it is not valid UTF-8. */
static size_t utf8_sequence(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len, i;
    unsigned long cp;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) len = 2, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef) len = 3, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4) len = 4, cp = c & 0x07;
    else return 0;
    if (n < len) return 0;
    for (i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}

/* A JSON string. Quote and backslash are escaped, control characters become \u00XX, and
 * a byte that is not part of valid UTF-8 becomes \u00XX too (read as Latin-1), so the
 * output is always valid JSON whatever the request contained. */
static void buf_json_string(buffer *b, srv_str s) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s.ptr;
    size_t i = 0;
    buf_put(b, "\"", 1);
    while (i < s.len) {
        unsigned c = p[i];
        size_t seq;
        if (c == '"' || c == '\\') {
            char esc[2];
            esc[0] = '\\';
            esc[1] = (char)c;
            buf_put(b, esc, 2);
            i++;
        } else if (c < 0x20 || c == 0x7f || (seq = utf8_sequence(p + i, s.len - i)) == 0) {
            char esc[6];
            esc[0] = '\\';
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            buf_put(b, esc, 6);
            i++;
        } else {
            buf_put(b, p + i, seq);
            i += seq;
        }
    }
    buf_put(b, "\"", 1);
}

/* ---------------------------------------------------------------------------------- */
/* /environ                                                                           */
/* ---------------------------------------------------------------------------------- */

static int nul_terminated(srv_str s) { return s.ptr != NULL && s.ptr[s.len] == '\0'; }

/* Whether srv's environ is large enough to hold `field` (the versioning rule: read a
 * field only when the struct as srv compiled it contains it). */
#define ENVIRON_HAS(env, field) \
    ((env)->size >= offsetof(srv_environ, field) + sizeof((env)->field))

static int route_environ(const srv_environ *env, srv_start_response_fn start_response,
                         srv_body *body) {
    struct {
        const char *key;
        srv_str value;
    } cgi[13];
    buffer b = {NULL, 0, 0, 0};
    size_t i;
    int all_nul = 1;
    char number[32];

    cgi[0].key = "REQUEST_METHOD", cgi[0].value = env->request_method;
    cgi[1].key = "SCRIPT_NAME", cgi[1].value = env->script_name;
    cgi[2].key = "PATH_INFO", cgi[2].value = env->path_info;
    cgi[3].key = "QUERY_STRING", cgi[3].value = env->query_string;
    cgi[4].key = "CONTENT_TYPE", cgi[4].value = env->content_type;
    cgi[5].key = "CONTENT_LENGTH", cgi[5].value = env->content_length;
    cgi[6].key = "SERVER_NAME", cgi[6].value = env->server_name;
    cgi[7].key = "SERVER_PORT", cgi[7].value = env->server_port;
    cgi[8].key = "SERVER_PROTOCOL", cgi[8].value = env->server_protocol;
    cgi[9].key = "REMOTE_ADDR", cgi[9].value = env->remote_addr;
    cgi[10].key = "REMOTE_PORT", cgi[10].value = env->remote_port;
    cgi[11].key = "URL_SCHEME", cgi[11].value = env->url_scheme;
    cgi[12].key = "REQUEST_URI", cgi[12].value = env->request_uri;

    buf_puts(&b, "{");
    for (i = 0; i < COUNT(cgi); i++) {
        all_nul &= nul_terminated(cgi[i].value);
        buf_puts(&b, i ? ",\"" : "\"");
        buf_puts(&b, cgi[i].key);
        buf_puts(&b, "\":");
        buf_json_string(&b, cgi[i].value);
    }

    buf_puts(&b, ",\"headers\":[");
    for (i = 0; i < env->header_count; i++) {
        all_nul &= nul_terminated(env->headers[i].name) && nul_terminated(env->headers[i].value);
        buf_puts(&b, i ? ",[" : "[");
        buf_json_string(&b, env->headers[i].name);
        buf_puts(&b, ",");
        buf_json_string(&b, env->headers[i].value);
        buf_puts(&b, "]");
    }

    buf_puts(&b, "],\"extensions\":{");
    if (ENVIRON_HAS(env, extension_count)) {
        for (i = 0; i < env->extension_count; i++) {
            all_nul &= nul_terminated(env->extensions[i].name) &&
                       nul_terminated(env->extensions[i].value);
            if (i) buf_puts(&b, ",");
            buf_json_string(&b, env->extensions[i].name);
            buf_puts(&b, ":");
            buf_json_string(&b, env->extensions[i].value);
        }
    }

    buf_puts(&b, "},\"multithread\":");
    buf_puts(&b, env->multithread ? "true" : "false");
    buf_puts(&b, ",\"multiprocess\":");
    buf_puts(&b, env->multiprocess ? "true" : "false");
    buf_puts(&b, ",\"run_once\":");
    buf_puts(&b, env->run_once ? "true" : "false");
    buf_puts(&b, ",\"input_length\":");
    snprintf(number, sizeof number, "%" PRId64, env->input->length);
    buf_puts(&b, number);
    buf_puts(&b, ",\"nul_terminated\":");
    buf_puts(&b, all_nul ? "true" : "false");
    buf_puts(&b, "}\n");

    if (b.failed) {
        free(b.data);
        return SRV_ERROR;
    }
    return respond(start_response, body, "200 OK", "application/json", b.data, b.len, 1);
}

/* ---------------------------------------------------------------------------------- */
/* /echo, /read-past                                                                  */
/* ---------------------------------------------------------------------------------- */

static int route_echo(const srv_environ *env, srv_start_response_fn start_response,
                      srv_body *body) {
    buffer b = {NULL, 0, 0, 0};
    unsigned long calls = 0;
    char read_calls[32], input_length[32];
    srv_header headers[3];

    if (env->input->length > 0) buf_reserve(&b, (size_t)env->input->length + 7);
    for (;;) {
        ssize_t n;
        buf_reserve(&b, 7);
        if (b.failed) {
            free(b.data);
            return SRV_ERROR;
        }
        n = env->input->read(b.data + b.len, 7);
        calls++;
        if (n == 0) break;
        if (n < 0 || n > 7) {
            free(b.data);
            return SRV_ERROR;
        }
        b.len += (size_t)n;
    }

    snprintf(read_calls, sizeof read_calls, "%lu", calls);
    snprintf(input_length, sizeof input_length, "%" PRId64, env->input->length);
    headers[0].name = mkstr("Content-Type");
    headers[0].value = mkstr("application/octet-stream");
    headers[1].name = mkstr("X-Read-Calls");
    headers[1].value = mkstr(read_calls);
    headers[2].name = mkstr("X-Input-Length");
    headers[2].value = mkstr(input_length);
    if (start_response("200 OK", headers, COUNT(headers), NULL) == NULL) {
        free(b.data);
        return SRV_ERROR;
    }
    body->kind = SRV_BODY_BYTES;
    body->data = b.data;
    body->len = b.len;
    set_close(body, close_free, b.data);
    return SRV_OK;
}

static int route_read_past(const srv_environ *env, srv_start_response_fn start_response,
                           srv_body *body) {
    char scratch[4096];
    long long total = 0;
    ssize_t n, r[3];
    int i;
    while ((n = env->input->read(scratch, sizeof scratch)) > 0) total += n;
    if (n < 0) return SRV_ERROR;
    for (i = 0; i < 3; i++) r[i] = env->input->read(scratch, sizeof scratch);
    return respond_fmt(start_response, body, "200 OK", "read %lld bytes, then %zd %zd %zd\n",
                       total, r[0], r[1], r[2]);
}

/* ---------------------------------------------------------------------------------- */
/* Iterator bodies: /iter, /big, /error/iter                                          */
/* ---------------------------------------------------------------------------------- */

typedef struct letters_iter {
    long long remaining, index;
    size_t size;
    char chunk[]; /* `size` bytes */
} letters_iter;

static int letters_next(void *ctx, const void **data, size_t *len) {
    letters_iter *it = (letters_iter *)ctx;
    if (it->remaining <= 0) return 0;
    memset(it->chunk, 'a' + (int)(it->index % 26), it->size);
    it->index++;
    it->remaining--;
    *data = it->chunk;
    *len = it->size;
    return 1;
}

#define BIG_CHUNK (64 * 1024)

typedef struct big_iter {
    long long remaining;
    char chunk[BIG_CHUNK];
} big_iter;

static int big_next(void *ctx, const void **data, size_t *len) {
    big_iter *it = (big_iter *)ctx;
    if (it->remaining <= 0) return 0;
    it->remaining--;
    *data = it->chunk;
    *len = BIG_CHUNK;
    return 1;
}

typedef struct failing_iter {
    int step;
} failing_iter;

static int failing_next(void *ctx, const void **data, size_t *len) {
    failing_iter *it = (failing_iter *)ctx;
    if (it->step++ == 0) {
        *data = "ok";
        *len = 2;
        return 1;
    }
    return SRV_ERROR;
}

/* Starts a 200 text/plain response (no Content-Length) with an iterator body whose
 * state `ctx` was malloc'd; close frees it. */
static int respond_iter(srv_start_response_fn start_response, srv_body *body,
                        int (*next)(void *, const void **, size_t *), void *ctx) {
    static const srv_header headers[] = {HDR("Content-Type", "text/plain")};
    if (start_response("200 OK", headers, COUNT(headers), NULL) == NULL) {
        free(ctx);
        return SRV_ERROR;
    }
    body->kind = SRV_BODY_ITER;
    body->next = next;
    set_close(body, close_free, ctx);
    return SRV_OK;
}

static int route_iter(const srv_environ *env, srv_start_response_fn start_response,
                      srv_body *body) {
    long long n = query_int(env->query_string, "n", 3);
    long long size = query_int(env->query_string, "size", 5);
    letters_iter *it;
    if (n < 0) n = 3;
    if (size < 0 || size > (1LL << 30)) size = 5;
    it = (letters_iter *)malloc(sizeof *it + (size_t)size);
    if (it == NULL) return SRV_ERROR;
    it->remaining = n;
    it->index = 0;
    it->size = (size_t)size;
    return respond_iter(start_response, body, letters_next, it);
}

static int route_big(const srv_environ *env, srv_start_response_fn start_response,
                     srv_body *body) {
    long long mb = query_int(env->query_string, "mb", 64);
    big_iter *it;
    if (mb < 0 || mb > (1LL << 30)) mb = 64;
    it = (big_iter *)malloc(sizeof *it);
    if (it == NULL) return SRV_ERROR;
    it->remaining = mb * (1024 * 1024 / BIG_CHUNK);
    memset(it->chunk, 'x', sizeof it->chunk);
    return respond_iter(start_response, body, big_next, it);
}

/* Rule 'Content-Length mismatch' on a stream: Content-Length 7, then 3 chunks of 5 bytes.
 * srv must never send more than 7 body bytes (the excess would pass for the next
 * response on a keep-alive connection) and then abort the connection. */
static int route_error_iter_too_long(srv_start_response_fn start_response, srv_body *body) {
    static const srv_header headers[] = {HDR("Content-Type", "text/plain"), HDR("Content-Length", "7")};
    letters_iter *it = (letters_iter *)malloc(sizeof *it + 5);
    if (it == NULL) return SRV_ERROR;
    it->remaining = 3;
    it->index = 0;
    it->size = 5;
    if (start_response("200 OK", headers, COUNT(headers), NULL) == NULL) {
        free(it);
        return SRV_ERROR;
    }
    body->kind = SRV_BODY_ITER;
    body->next = letters_next;
    set_close(body, close_free, it);
    return SRV_OK;
}

/* /write-big?mb=N: N MiB of 'x' through write() in 64 KiB pieces, then an empty body. */
static int route_write_big(const srv_environ *env, srv_start_response_fn start_response) {
    static const srv_header headers[] = {HDR("Content-Type", "text/plain")};
    enum { PIECE = 64 * 1024 };
    long long mb = query_int(env->query_string, "mb", 64);
    long long i;
    int rc = SRV_OK;
    srv_write_fn write;
    char *piece;
    if (mb < 0 || mb > (1LL << 20)) mb = 64;
    write = start_response("200 OK", headers, COUNT(headers), NULL);
    if (write == NULL) return SRV_ERROR;
    piece = (char *)malloc(PIECE);
    if (piece == NULL) return SRV_ERROR;
    memset(piece, 'x', PIECE);
    for (i = 0; i < mb * 16 && rc == SRV_OK; i++) rc = write(piece, PIECE);
    free(piece);
    return rc;
}

static int route_error_iter(srv_start_response_fn start_response, srv_body *body) {
    failing_iter *it = (failing_iter *)malloc(sizeof *it);
    if (it == NULL) return SRV_ERROR;
    it->step = 0;
    return respond_iter(start_response, body, failing_next, it);
}

/* ---------------------------------------------------------------------------------- */
/* /file                                                                              */
/* ---------------------------------------------------------------------------------- */

static int route_file(const srv_environ *env, srv_start_response_fn start_response,
                      srv_body *body) {
    static const srv_header headers[] = {HDR("Content-Type", "application/octet-stream")};
    char path[4096];
    long long offset = query_int(env->query_string, "offset", 0);
    long long length = query_int(env->query_string, "length", -1);
    int fd;

    if (!query_param(env->query_string, "path", path, sizeof path) || path[0] == '\0')
        return respond_static(start_response, body, "400 Bad Request", "missing ?path=\n");
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        char reason[128];
        int e = errno;
        if (strerror_r(e, reason, sizeof reason) != 0) snprintf(reason, sizeof reason, "errno %d", e);
        return respond_fmt(start_response, body, "404 Not Found", "cannot open %s: %s\n", path,
                           reason);
    }
    if (start_response("200 OK", headers, COUNT(headers), NULL) == NULL) {
        close(fd);
        return SRV_ERROR;
    }
    body->kind = SRV_BODY_FILE;
    body->fd = fd;
    body->offset = offset < 0 ? 0 : offset;
    body->length = length < 0 ? -1 : length;
    set_close(body, close_fd, (void *)(intptr_t)fd);
    return SRV_OK;
}

/* ---------------------------------------------------------------------------------- */
/* /write, /status, /exc-info                                                         */
/* ---------------------------------------------------------------------------------- */

static const srv_header text_plain[] = {HDR("Content-Type", "text/plain")};

static int route_write(srv_start_response_fn start_response, srv_body *body) {
    srv_write_fn write_fn = start_response("200 OK", text_plain, COUNT(text_plain), NULL);
    if (write_fn == NULL) return SRV_ERROR;
    if (write_fn("first\n", 6) != SRV_OK) return SRV_ERROR;
    if (write_fn("second\n", 7) != SRV_OK) return SRV_ERROR;
    body->kind = SRV_BODY_BYTES;
    body->data = "third\n";
    body->len = 6;
    return SRV_OK;
}

/* /body-zeroed: the srv_body srv handed in, as GATEWAY.md promises it: zeroed but for size. */
static int route_body_zeroed(srv_start_response_fn start_response, srv_body *body) {
    int zeroed = body->size == sizeof(srv_body) && body->kind == SRV_BODY_EMPTY && body->data == NULL &&
                 body->len == 0 && body->next == NULL && body->fd == 0 && body->offset == 0 &&
                 body->length == 0 && body->ctx == NULL && body->close == NULL;
    return respond_fmt(start_response, body, "200 OK", "%s size=%zu kind=%d fd=%d offset=%lld length=%lld\n",
                       zeroed ? "zeroed" : "NOT-ZEROED", body->size, body->kind, body->fd,
                       (long long)body->offset, (long long)body->length);
}

static int route_status(const srv_environ *env, srv_start_response_fn start_response,
                        srv_body *body) {
    char code[32], status[64];
    if (!query_param(env->query_string, "code", code, sizeof code)) strcpy(code, "200");
    snprintf(status, sizeof status, "%s Custom", code);
    return respond_fmt(start_response, body, status, "status %s\n", code);
}

static int route_exc_info(srv_start_response_fn start_response, srv_body *body) {
    srv_exc_info exc;
    exc.size = sizeof exc;
    exc.message = "recovering";
    if (start_response("200 OK", text_plain, COUNT(text_plain), NULL) == NULL) return SRV_ERROR;
    if (start_response("503 Service Unavailable", text_plain, COUNT(text_plain), &exc) == NULL)
        return SRV_ERROR;
    body->kind = SRV_BODY_BYTES;
    body->data = "replaced\n";
    body->len = 9;
    return SRV_OK;
}

/* ---------------------------------------------------------------------------------- */
/* /thread                                                                            */
/* ---------------------------------------------------------------------------------- */

typedef struct thread_job {
    const srv_environ *env;
    srv_start_response_fn start_response;
    int result;
} thread_job;

static void *thread_main(void *arg) {
    thread_job *job = (thread_job *)arg;
    buffer b = {NULL, 0, 0, 0};
    srv_write_fn write_fn;
    ssize_t n;

    job->result = SRV_ERROR;
    write_fn = job->start_response("200 OK", text_plain, COUNT(text_plain), NULL);
    if (write_fn == NULL) return NULL;
    for (;;) {
        buf_reserve(&b, 4096);
        if (b.failed) goto out;
        n = job->env->input->read(b.data + b.len, b.cap - b.len);
        if (n < 0) goto out;
        if (n == 0) break;
        b.len += (size_t)n;
    }
    job->env->errors->write("from thread", 11);
    if (write_fn("thread:", 7) != SRV_OK) goto out;
    if (b.len > 0 && write_fn(b.data, b.len) != SRV_OK) goto out;
    job->result = SRV_OK;
out:
    free(b.data);
    return NULL;
}

static int route_thread(const srv_environ *env, srv_start_response_fn start_response,
                        srv_body *body) {
    thread_job job;
    pthread_t thread;
    job.env = env;
    job.start_response = start_response;
    job.result = SRV_ERROR;
    if (pthread_create(&thread, NULL, thread_main, &job) != 0) return SRV_ERROR;
    pthread_join(thread, NULL);
    body->kind = SRV_BODY_EMPTY;
    return job.result;
}

/* ---------------------------------------------------------------------------------- */
/* The rule breakers                                                                  */
/* ---------------------------------------------------------------------------------- */

static int route_error(const srv_environ *env, srv_start_response_fn start_response,
                       srv_body *body) {
    srv_str what = env->path_info;
    srv_exc_info exc;
    exc.size = sizeof exc;

    if (str_is(what, "/error/no-start-response")) {
        /* Rule 'start_response not called': srv answers 500. */
        owned_text_body(body, "never sent\n");
        return SRV_OK;
    }
    if (str_is(what, "/error/twice")) {
        /* Rule 'start_response called twice': the second call returns NULL, 500. */
        start_response("200 OK", text_plain, COUNT(text_plain), NULL);
        start_response("201 Created", text_plain, COUNT(text_plain), NULL);
        owned_text_body(body, "x");
        return SRV_OK;
    }
    if (str_is(what, "/error/twice-then-write")) {
        /* Rule 'start_response called twice', then a write with the first call's write:
         * nothing was sent, so the response is still a 500. */
        srv_write_fn write = start_response("200 OK", text_plain, COUNT(text_plain), NULL);
        start_response("201 Created", text_plain, COUNT(text_plain), NULL);
        if (write != NULL) write("x", 1);
        return SRV_OK;
    }
    if (str_is(what, "/error/empty-write-then-exc-info")) {
        /* write(data, 0) commits nothing, so exc_info may still replace the response. */
        srv_exc_info exc;
        srv_write_fn write = start_response("200 OK", text_plain, COUNT(text_plain), NULL);
        exc.size = sizeof exc;
        exc.message = "recovering after an empty write";
        if (write == NULL || write("", 0) != SRV_OK) return SRV_ERROR;
        if (start_response("503 Service Unavailable", text_plain, COUNT(text_plain), &exc) == NULL)
            return SRV_ERROR;
        owned_text_body(body, "replaced\n");
        return SRV_OK;
    }
    if (str_is(what, "/error/bad-status")) {
        /* Rule 'invalid status'. */
        start_response("abc", text_plain, COUNT(text_plain), NULL);
        owned_text_body(body, "bad status\n");
        return SRV_OK;
    }
    if (str_is(what, "/error/bad-header")) {
        /* Rule 'invalid header': a CR LF in a value would inject a header. */
        static const srv_header headers[] = {HDR("Content-Type", "text/plain"),
                                             HDR("X-Bad", "ok\r\nInjected: 1")};
        start_response("200 OK", headers, COUNT(headers), NULL);
        owned_text_body(body, "bad header\n");
        return SRV_OK;
    }
    if (str_is(what, "/error/status-crlf")) {
        /* Rule 'invalid status', with a status that tries to start a log line of its own. */
        start_response("200 OK\r\n[2026-01-01 00:00:00 +0000] [1] [CRITICAL] forged", text_plain,
                       COUNT(text_plain), NULL);
        owned_text_body(body, "x\n");
        return SRV_OK;
    }
    if (str_is(what, "/error/header-name-crlf")) {
        static const srv_header headers[] = {HDR("X-A\r\n[CRITICAL] forged", "1")};
        start_response("200 OK", headers, COUNT(headers), NULL);
        owned_text_body(body, "x\n");
        return SRV_OK;
    }
    if (str_is(what, "/error/bad-header-name")) {
        /* Rule 'invalid header': a name must be an RFC 9110 token. */
        static const srv_header headers[] = {HDR("Content-Type", "text/plain"),
                                             HDR("Bad Name:", "1")};
        start_response("200 OK", headers, COUNT(headers), NULL);
        owned_text_body(body, "bad header name\n");
        return SRV_OK;
    }
    if (str_is(what, "/error/hop-by-hop")) {
        /* Not an error: srv drops the hop-by-hop headers, logs it, and serves the rest. */
        static const srv_header headers[] = {
            HDR("Content-Type", "text/plain"), HDR("Connection", "close"),
            HDR("Transfer-Encoding", "chunked"), HDR("Keep-Alive", "timeout=1"),
            HDR("X-Kept", "yes")};
        if (start_response("200 OK", headers, COUNT(headers), NULL) == NULL) return SRV_ERROR;
        owned_text_body(body, "hop-by-hop dropped\n");
        return SRV_OK;
    }
    if (str_is(what, "/error/after-body")) {
        /* Rule 'start_response after body started': srv aborts the connection. */
        srv_write_fn write_fn = start_response("200 OK", text_plain, COUNT(text_plain), NULL);
        if (write_fn != NULL) write_fn("partial", 7);
        exc.message = "failed after the body started";
        start_response("500 Oops", text_plain, COUNT(text_plain), &exc);
        owned_text_body(body, "never sent\n");
        return SRV_OK;
    }
    if (str_is(what, "/error/return")) {
        /* 'app returned SRV_ERROR' before anything was sent: 500. */
        owned_text_body(body, "never sent\n");
        return SRV_ERROR;
    }
    if (str_is(what, "/error/iter")) {
        /* The iterator fails after one chunk: srv aborts the connection. */
        return route_error_iter(start_response, body);
    }
    if (str_is(what, "/error/iter-too-long")) {
        return route_error_iter_too_long(start_response, body);
    }
    if (str_is(what, "/error/content-length")) {
        /* Rule 'Content-Length mismatch': 100 promised, 5 given. */
        static const srv_header headers[] = {HDR("Content-Type", "text/plain"),
                                             HDR("Content-Length", "100")};
        if (start_response("200 OK", headers, COUNT(headers), NULL) == NULL) return SRV_ERROR;
        owned_text_body(body, "short");
        return SRV_OK;
    }
    return respond_static(start_response, body, "404 Not Found", "not found\n");
}

/* ---------------------------------------------------------------------------------- */
/* Load and unload                                                                    */
/* ---------------------------------------------------------------------------------- */

static int loaded_pid;
static char loaded_mount[256];
static char loaded_server[64];
static int loaded_abi_major, loaded_abi_minor;

static int conformance_load(const srv_server_info *info, char *error, size_t error_size) {
    if (getenv("SRV_CONFORMANCE_FAIL_LOAD") != NULL) {
        if (error_size > 0) snprintf(error, error_size, "SRV_CONFORMANCE_FAIL_LOAD is set");
        return SRV_ERROR;
    }
    /* The strings in info live only during this call: copy them. */
    loaded_pid = info->worker_pid;
    loaded_abi_major = info->abi_major;
    loaded_abi_minor = info->abi_minor;
    snprintf(loaded_mount, sizeof loaded_mount, "%s", info->mount ? info->mount : "");
    snprintf(loaded_server, sizeof loaded_server, "%s",
             info->server_version ? info->server_version : "");
    return SRV_OK;
}

static void conformance_unload(void) {
    const char *path = getenv("SRV_CONFORMANCE_UNLOAD_FILE");
    char line[64];
    int fd, n;
    ssize_t written;
    if (path == NULL || path[0] == '\0') return;
    n = snprintf(line, sizeof line, "unload %ld\n", (long)getpid());
    fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    written = write(fd, line, (size_t)n); /* one write: lines from several workers never mix */
    (void)written;
    close(fd);
}

/* ---------------------------------------------------------------------------------- */
/* The entry point                                                                    */
/* ---------------------------------------------------------------------------------- */

int srv_gateway_app(const srv_environ *environ, srv_start_response_fn start_response,
                    srv_body *body) {
    const srv_environ *env = environ;
    srv_str path = env->path_info;

    if (path.len == 0 || str_is(path, "/"))
        return respond_static(start_response, body, "200 OK", "conformance " APP_VERSION "\n");
    if (str_is(path, "/environ")) return route_environ(env, start_response, body);
    if (str_is(path, "/echo")) return route_echo(env, start_response, body);
    if (str_is(path, "/iter")) return route_iter(env, start_response, body);
    if (str_is(path, "/big")) return route_big(env, start_response, body);
    if (str_is(path, "/file")) return route_file(env, start_response, body);
    if (str_is(path, "/write")) return route_write(start_response, body);
    if (str_is(path, "/write-big")) return route_write_big(env, start_response);
    if (str_is(path, "/status")) return route_status(env, start_response, body);
    if (str_is(path, "/body-zeroed")) return route_body_zeroed(start_response, body);
    if (str_is(path, "/exc-info")) return route_exc_info(start_response, body);
    if (str_is(path, "/read-past")) return route_read_past(env, start_response, body);
    if (str_is(path, "/errors")) {
        static const char line[] = "conformance: hello from wsgi.errors";
        env->errors->write(line, sizeof line - 1);
        return respond_static(start_response, body, "200 OK", "logged\n");
    }
    if (str_is(path, "/errors-lines")) {
        static const char lines[] = "first line\nsecond line\n";
        env->errors->write(lines, sizeof lines - 1);
        return respond_static(start_response, body, "200 OK", "logged\n");
    }
    if (str_is(path, "/thread")) return route_thread(env, start_response, body);
    if (str_is(path, "/sleep")) {
        long long ms = query_int(env->query_string, "ms", 0);
        struct timespec ts;
        if (ms < 0) ms = 0;
        ts.tv_sec = (time_t)(ms / 1000);
        ts.tv_nsec = (long)(ms % 1000) * 1000000L;
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
        return respond_fmt(start_response, body, "200 OK", "slept %lld\n", ms);
    }
    if (str_is(path, "/crash")) {
        raise(SIGSEGV);
        return SRV_ERROR;
    }
    if (str_is(path, "/counter")) {
        unsigned long long count = counter_add(&request_count);
        return respond_fmt(start_response, body, "200 OK", "pid %ld count %llu\n",
                           (long)getpid(), count);
    }
    if (str_is(path, "/loaded")) {
        return respond_fmt(start_response, body, "200 OK",
                           "pid %d mount '%s' abi %d.%d server %s\n", loaded_pid, loaded_mount,
                           loaded_abi_major, loaded_abi_minor, loaded_server);
    }
    if (str_is(path, "/closes")) {
        unsigned long long set, called;
        pthread_mutex_lock(&counters_lock);
        set = closes_set;
        called = closes_called;
        pthread_mutex_unlock(&counters_lock);
        return respond_fmt(start_response, body, "200 OK", "set %llu closed %llu\n", set,
                           called);
    }
    if (path.len >= 7 && memcmp(path.ptr, "/error/", 7) == 0)
        return route_error(env, start_response, body);
    return respond_static(start_response, body, "404 Not Found", "not found\n");
}
