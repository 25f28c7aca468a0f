/*
 * srv gateway spec, ABI 1.0 — the contract between the srv application server and an
 * application compiled as a shared object. This header is the single source of truth;
 * PluginSDK/GATEWAY.md explains the rationale and every rule in prose.
 *
 * The shape is PEP 3333's (WSGI):
 *
 *     app(environ, start_response) -> body
 *     start_response(status, headers, exc_info) -> write
 *
 * An application exports exactly two symbols:
 *
 *     const srv_descriptor srv_gateway_descriptor;   (use SRV_DESCRIPTOR below)
 *     int srv_gateway_app(const srv_environ *, srv_start_response_fn, srv_body *);
 *
 * Compatibility rules: a struct carries its size in its first field and only ever grows
 * at the end; a field added after 1.0 names the ABI minor version that added it. srv
 * refuses a plugin whose ABI major differs from its own or whose ABI minor is newer.
 *
 * Compiles cleanly as C99 (-std=c99 -Wall -Wextra -pedantic) and as C++.
 */
#ifndef SRV_GATEWAY_H
#define SRV_GATEWAY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------- */
/* Versioning and export                                                              */
/* ---------------------------------------------------------------------------------- */

/** First field of the descriptor: the bytes "SRVG" read as a little-endian uint32. */
#define SRV_GATEWAY_MAGIC 0x47565253u
#define SRV_ABI_MAJOR 1
#define SRV_ABI_MINOR 0

/**
 * True when the struct at `ptr` (of type `type`, whose first field is its `size`) is large
 * enough to hold `field`: structs only grow at the end, so a field added in 1.N exists in
 * a struct from a 1.N (or later) peer. Use it before reading a field newer than 1.0 that
 * an older srv or plugin may not have:
 *     if (SRV_HAS(environ, srv_environ, some_field_since_1_1)) { ... }
 */
#define SRV_HAS(ptr, type, field) ((ptr)->size >= offsetof(type, field) + sizeof((ptr)->field))

/** Marks a symbol srv must find even when the plugin is built with -fvisibility=hidden. */
#if defined(__GNUC__) || defined(__clang__)
#define SRV_EXPORT __attribute__((visibility("default")))
#else
#define SRV_EXPORT
#endif

/** Names of the two exported symbols. */
#define SRV_DESCRIPTOR_SYMBOL "srv_gateway_descriptor"
#define SRV_APP_SYMBOL "srv_gateway_app"
/*
 * Swift plugins only: `const char *srv_swift_toolchain(void)`, exported by the Swift SDK,
 * returns the version of the Swift compiler that built the plugin ("6.3.1"). srv refuses a
 * plugin whose toolchain differs from its own before calling any other of its code (one
 * Swift runtime per process; no stable Swift ABI on Linux). C, C++, Rust and Zig plugins
 * do not define it.
 */
#define SRV_SWIFT_TOOLCHAIN_SYMBOL "srv_swift_toolchain"

/** Return values of the application, the load hook, write and the iterator. */
#define SRV_OK 0
#define SRV_ERROR (-1)

/* ---------------------------------------------------------------------------------- */
/* Strings and headers                                                                */
/* ---------------------------------------------------------------------------------- */

/**
 * A byte string: `len` bytes at `ptr`, and also a NUL at `ptr[len]`, so `ptr` can be
 * handed to C string functions when the bytes contain no NUL. An absent value is
 * `{"", 0}`, never a NULL pointer. Strings srv gives the application live as long as the
 * structure that holds them (see srv_environ). Strings the application gives srv
 * (headers) are copied before the call returns.
 */
typedef struct srv_str {
    const char *ptr;
    size_t len;
} srv_str;

/** One HTTP header (or one server extension key/value pair). */
typedef struct srv_header {
    srv_str name;
    srv_str value;
} srv_header;

/* ---------------------------------------------------------------------------------- */
/* Streams (wsgi.input, wsgi.errors)                                                  */
/* ---------------------------------------------------------------------------------- */

/**
 * The request body. `read` copies up to `n` bytes into `buf` and returns the number of
 * bytes copied, 0 at the end of the body, or -1 on error. The whole body has been
 * received before the application is called, so read never waits for the network.
 * Reading past the end is not an error: it keeps returning 0.
 * `read` is a plain function pointer bound to its request; it is valid from the call of
 * srv_gateway_app until srv calls the body's close, from any thread, one call at a time.
 */
typedef struct srv_input {
    size_t size;              /* sizeof(srv_input) as srv compiled it */
    int64_t length;           /* bytes in the body, the decoded length for chunked bodies */
    ssize_t (*read)(void *buf, size_t n);
} srv_input;

/**
 * The error stream: each call writes one line (a trailing newline is added when
 * missing) to srv's error log, prefixed with the application's name. Same lifetime and
 * threading as srv_input.read.
 */
typedef struct srv_errors {
    size_t size;              /* sizeof(srv_errors) as srv compiled it */
    void (*write)(const char *msg, size_t len);
} srv_errors;

/* ---------------------------------------------------------------------------------- */
/* environ                                                                            */
/* ---------------------------------------------------------------------------------- */

/**
 * Everything srv knows about one request. Read-only for the application. Every pointer
 * in it, and the strings it points to, live until srv calls the body's close (or, when
 * the application returns SRV_ERROR, until srv_gateway_app returns). Copy what you keep.
 * The CGI names are those of PEP 3333 and RFC 3875.
 */
typedef struct srv_environ {
    size_t size;              /* sizeof(srv_environ) as srv compiled it */

    srv_str request_method;   /* REQUEST_METHOD: "GET" */
    srv_str script_name;      /* SCRIPT_NAME: the mount point, "" for an app at "/" */
    srv_str path_info;        /* PATH_INFO: the rest of the path, percent-decoded once,
                                 dot segments resolved (GATEWAY.md "The path") */
    srv_str query_string;     /* QUERY_STRING: after "?", not decoded, "" when absent */
    srv_str content_type;     /* CONTENT_TYPE: "" when absent */
    srv_str content_length;   /* CONTENT_LENGTH: the body's decoded length in decimal ("0"
                                 for an empty one); "" when the request has no body at all */
    srv_str server_name;      /* SERVER_NAME */
    srv_str server_port;      /* SERVER_PORT */
    srv_str server_protocol;  /* SERVER_PROTOCOL: "HTTP/1.1" or "HTTP/1.0" */
    srv_str remote_addr;      /* REMOTE_ADDR: the client, or the trusted proxy's client */
    srv_str remote_port;      /* REMOTE_PORT: "" for Unix sockets */
    srv_str url_scheme;       /* wsgi.url_scheme: "http" or "https" */
    srv_str request_uri;      /* REQUEST_URI: the raw target as the client sent it */

    const srv_header *headers; /* the request headers in arrival order, names as sent */
    size_t header_count;

    srv_input *input;          /* wsgi.input */
    srv_errors *errors;        /* wsgi.errors */

    int multithread;           /* wsgi.multithread: another thread may call the app now */
    int multiprocess;          /* wsgi.multiprocess: other processes serve the same app */
    int run_once;              /* wsgi.run_once: always 0 in srv */

    /* Server extension keys, PEP 3333's "server-defined variables": "srv.version",
     * "srv.request_id", "srv.worker_pid", "srv.generation", "srv.app_hash". */
    const srv_header *extensions;
    size_t extension_count;
} srv_environ;

/* ---------------------------------------------------------------------------------- */
/* start_response and write                                                           */
/* ---------------------------------------------------------------------------------- */

/**
 * write(data, len): send part of the response body at once, before the returned body
 * (PEP 3333's imperative write). Returns SRV_OK, or SRV_ERROR when the client is gone or
 * a rule was broken. Valid only until srv_gateway_app returns; any thread, one call at a
 * time.
 */
typedef int (*srv_write_fn)(const void *data, size_t len);

/** Present when start_response is called because of an error (PEP 3333's exc_info). */
typedef struct srv_exc_info {
    size_t size;              /* sizeof(srv_exc_info) as the application compiled it */
    const char *message;      /* NUL-terminated, logged by srv; may be NULL */
} srv_exc_info;

/**
 * start_response(status, headers, header_count, exc_info): begin the response.
 *   status  "200 OK": three digits, a space, a reason phrase (NUL-terminated).
 *   headers the response headers; srv copies them before returning. Do not send
 *           hop-by-hop headers (Connection, Keep-Alive, Transfer-Encoding): srv owns
 *           the framing. Content-Length, when given, must match the body.
 *   exc_info NULL normally. Non-NULL replaces an earlier status and headers until the
 *           response is committed (GATEWAY.md "The commit point": the first write with
 *           len > 0, or the return with a body); after that it makes srv abort
 *           the connection (the client sees a truncated response), as PEP 3333 does.
 * Returns the write callable, or NULL when the call broke a rule (see GATEWAY.md);
 * a broken rule turns the response into a 500 while it is not committed.
 * Valid only until srv_gateway_app returns; any thread, one call at a time.
 */
typedef srv_write_fn (*srv_start_response_fn)(const char *status, const srv_header *headers,
                                               size_t header_count, const srv_exc_info *exc_info);

/* ---------------------------------------------------------------------------------- */
/* The response body                                                                  */
/* ---------------------------------------------------------------------------------- */

typedef enum srv_body_kind {
    SRV_BODY_EMPTY = 0,       /* no body beyond what write sent (the initial value) */
    SRV_BODY_BYTES = 1,       /* `data`, `len` */
    SRV_BODY_ITER = 2,        /* `next` pulled by srv until it returns 0 */
    SRV_BODY_FILE = 3         /* `fd`, `offset`, `length`, sent with sendfile */
} srv_body_kind;

/**
 * The application fills the body srv hands it (zeroed, `size` set by srv). Whatever the
 * kind, once srv is done with the body (sent, failed, or the client went away) it calls
 * `close(ctx)` exactly once when `close` is non-NULL: that is where a bytes body releases
 * its memory, an iterator frees its state and a file body closes its fd (srv never
 * closes the fd itself). srv calls next and close on the worker's event-loop thread.
 */
typedef struct srv_body {
    size_t size;              /* sizeof(srv_body) as srv compiled it */
    int kind;                 /* srv_body_kind */

    /* SRV_BODY_BYTES: must stay valid until close. */
    const void *data;
    size_t len;

    /* SRV_BODY_ITER: return 1 and set *data, *len for the next chunk (valid until the
     * next call to next or close), 0 at the end, SRV_ERROR on error (srv then aborts
     * the connection; the headers are already sent). Empty chunks are skipped. srv pulls
     * the next chunk only when the client has taken the previous ones (back-pressure). */
    int (*next)(void *ctx, const void **data, size_t *len);

    /* SRV_BODY_FILE: an open regular file; `length` -1 means up to the end of file. */
    int fd;
    int64_t offset;
    int64_t length;

    void *ctx;                /* passed to next and close */
    void (*close)(void *ctx);
} srv_body;

/* ---------------------------------------------------------------------------------- */
/* Loading                                                                            */
/* ---------------------------------------------------------------------------------- */

/** What srv tells the load hook about the process the application runs in. */
typedef struct srv_server_info {
    size_t size;              /* sizeof(srv_server_info) as srv compiled it */
    int abi_major;
    int abi_minor;
    const char *server_version; /* "srv/0.1.0" */
    const char *app_path;     /* the file the user named (srv loads a snapshot of it) */
    const char *mount;        /* the SCRIPT_NAME the app is mounted at, "" for "/" */
    int worker_pid;
    int multithread;
    int multiprocess;
} srv_server_info;

/**
 * load(info, error, error_size): called once per worker process after the descriptor
 * was validated and before any request. Return SRV_OK, or SRV_ERROR after writing a
 * NUL-terminated reason of at most error_size bytes to `error`: srv then refuses the
 * plugin with that message (and, on reload, keeps the previous build serving).
 */
typedef int (*srv_load_fn)(const srv_server_info *info, char *error, size_t error_size);

/** unload(): called once when a worker exits gracefully. Never followed by dlclose. */
typedef void (*srv_unload_fn)(void);

/**
 * The entry point. Called once per request, on the worker's event-loop thread (or one of
 * --threads N threads when the descriptor sets SRV_FLAG_THREAD_SAFE). Fill *body and
 * return SRV_OK, or return SRV_ERROR (srv answers 500 when nothing was sent yet).
 * start_response must have been called before a SRV_OK return.
 */
typedef int (*srv_app_fn)(const srv_environ *environ, srv_start_response_fn start_response,
                          srv_body *body);

/** The application may be called from several threads at once. */
#define SRV_FLAG_THREAD_SAFE 0x1u

/** The one exported const descriptor. Its first fields never move. */
typedef struct srv_descriptor {
    uint32_t magic;           /* SRV_GATEWAY_MAGIC */
    uint16_t abi_major;       /* SRV_ABI_MAJOR the plugin was built with */
    uint16_t abi_minor;       /* the minor the plugin needs (SRV_ABI_MINOR_REQUIRED) */
    uint32_t descriptor_size; /* sizeof(srv_descriptor) */
    uint32_t environ_size;    /* sizeof(srv_environ) */
    uint32_t body_size;       /* sizeof(srv_body) */
    uint32_t flags;           /* SRV_FLAG_* */
    const char *name;         /* the application's name, for logs and status */
    const char *version;      /* the application's own version string */
    srv_load_fn load;         /* optional, NULL when absent */
    srv_unload_fn unload;     /* optional, NULL when absent */
} srv_descriptor;

/**
 * The ABI minor a plugin needs: the oldest srv 1.x it runs on. It is 0 unless the plugin
 * defines it before including this header because it uses something a later minor added
 * (`#define SRV_ABI_MINOR_REQUIRED 1`), so that rebuilding an unchanged plugin against a
 * newer header never forces a server upgrade.
 */
#ifndef SRV_ABI_MINOR_REQUIRED
#define SRV_ABI_MINOR_REQUIRED 0
#endif
#if SRV_ABI_MINOR_REQUIRED > SRV_ABI_MINOR
#error "SRV_ABI_MINOR_REQUIRED is newer than this header's SRV_ABI_MINOR"
#endif

/** The size of the ABI 1.0 descriptor: the smallest srv accepts. */
#define SRV_DESCRIPTOR_SIZE_1_0 56

/**
 * Declares the descriptor with this header's sizes and the ABI minor the plugin needs:
 *
 *     SRV_DESCRIPTOR("hello", "1.0.0", 0, NULL, NULL);
 */
#ifdef __cplusplus
#define SRV_DESCRIPTOR_LINKAGE extern "C" SRV_EXPORT
#else
#define SRV_DESCRIPTOR_LINKAGE SRV_EXPORT
#endif
#define SRV_DESCRIPTOR(app_name, app_version, app_flags, load_hook, unload_hook)      \
    SRV_DESCRIPTOR_LINKAGE const srv_descriptor srv_gateway_descriptor = {            \
        SRV_GATEWAY_MAGIC, SRV_ABI_MAJOR, SRV_ABI_MINOR_REQUIRED,                     \
        (uint32_t)sizeof(srv_descriptor), (uint32_t)sizeof(srv_environ),             \
        (uint32_t)sizeof(srv_body), (uint32_t)(app_flags), (app_name), (app_version), \
        (load_hook), (unload_hook)}

/** Prototype of the entry point, for the application to define. */
SRV_EXPORT int srv_gateway_app(const srv_environ *environ, srv_start_response_fn start_response,
                               srv_body *body);

#ifdef __cplusplus
}
#endif

#endif /* SRV_GATEWAY_H */
