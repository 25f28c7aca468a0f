/* Compiles srv/gateway.h as C99 and as C++11 with every warning an error
 * (make header-check). Not a plugin anyone loads. */
#include <srv/gateway.h>

SRV_DESCRIPTOR("header-check", "1.0.0", SRV_FLAG_THREAD_SAFE, NULL, NULL);

int srv_gateway_app(const srv_environ *environ, srv_start_response_fn start_response,
                    srv_body *body) {
    static const srv_header headers[] = {
        {{"Content-Type", 12}, {"text/plain", 10}},
    };
    srv_write_fn write;
    if (!SRV_HAS(environ, srv_environ, extension_count)) return SRV_ERROR;
    write = start_response("200 OK", headers, sizeof headers / sizeof headers[0], NULL);
    if (write == NULL) return SRV_ERROR;
    body->kind = SRV_BODY_BYTES;
    body->data = "ok\n";
    body->len = 3;
    return SRV_OK;
}
