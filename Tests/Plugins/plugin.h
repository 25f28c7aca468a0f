/*
 * Shared bits of the deliberately broken test plugins (Tests/Plugins/Makefile). Each
 * plugin breaks exactly one loading rule of PluginSDK/GATEWAY.md and is otherwise a
 * correct "hello"-style application, so that srv's refusal can only have one cause.
 */
#ifndef SRV_TEST_PLUGIN_H
#define SRV_TEST_PLUGIN_H

#include <srv/gateway.h>

#include <string.h>

/* A descriptor with the given header fields, everything else as SRV_DESCRIPTOR sets it. */
#define TEST_DESCRIPTOR(name, magic, major, minor, size, load_hook)                          \
    SRV_EXPORT const srv_descriptor srv_gateway_descriptor = {                              \
        (magic), (major), (minor), (size), (uint32_t)sizeof(srv_environ),                   \
        (uint32_t)sizeof(srv_body), 0u, (name), "1.0.0", (load_hook), NULL}

/* The entry point: 200 text/plain with a static body. */
#define TEST_APP(text)                                                                       \
    int srv_gateway_app(const srv_environ *environ, srv_start_response_fn start_response,   \
                        srv_body *body) {                                                   \
        static const srv_header headers[] = {{{"Content-Type", 12}, {"text/plain", 10}}};   \
        (void)environ;                                                                      \
        if (start_response("200 OK", headers, 1, NULL) == NULL) return SRV_ERROR;           \
        body->kind = SRV_BODY_BYTES;                                                        \
        body->data = (text);                                                                \
        body->len = strlen(text);                                                           \
        return SRV_OK;                                                                      \
    }

#endif
