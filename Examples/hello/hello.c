/*
 * hello: the smallest srv application. Answers every request with "Hello, World!\n".
 *
 * Build (from the repository root):
 *   cc -std=c99 -shared -fPIC -fvisibility=hidden -I PluginSDK/C/include -o libhello.so \
 *      Examples/hello/hello.c
 * Run:
 *   srv --app ./libhello.so
 *
 * Nothing is allocated per request: the headers and the body are static constants, so
 * the body needs no close.
 */
#include <srv/gateway.h>

SRV_DESCRIPTOR("hello", "1.0.0", SRV_FLAG_THREAD_SAFE, NULL, NULL);

#define STR(s) {(s), sizeof(s) - 1}

static const char hello_body[] = "Hello, World!\n";
/* The Content-Length below must match the body: fail the build if someone edits one. */
typedef char hello_body_is_14_bytes[sizeof hello_body - 1 == 14 ? 1 : -1];

static const srv_header hello_headers[] = {
    {STR("Content-Type"), STR("text/plain")},
    {STR("Content-Length"), STR("14")},
};

int srv_gateway_app(const srv_environ *environ, srv_start_response_fn start_response,
                    srv_body *body) {
    (void)environ;
    if (start_response("200 OK", hello_headers, sizeof hello_headers / sizeof hello_headers[0],
                       NULL) == NULL)
        return SRV_ERROR;
    body->kind = SRV_BODY_BYTES;
    body->data = hello_body;
    body->len = sizeof hello_body - 1;
    return SRV_OK;
}
