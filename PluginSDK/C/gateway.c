/* The SrvGateway target is the gateway spec header; SwiftPM needs one source file for a
 * C target. The assertions pin the layout facts srv and the Swift SDK rely on. */
#include <stdint.h>
#include "srv/gateway.h"

_Static_assert(sizeof(srv_str) == 2 * sizeof(void *), "srv_str is pointer + length");
_Static_assert(offsetof(srv_descriptor, magic) == 0, "the magic is the first field");
_Static_assert(offsetof(srv_descriptor, abi_major) == 4, "the ABI version never moves");
#if UINTPTR_MAX == 0xffffffffffffffffu
_Static_assert(offsetof(srv_descriptor, unload) + sizeof(srv_unload_fn) == SRV_DESCRIPTOR_SIZE_1_0,
               "the ABI 1.0 descriptor ends after unload: later fields go after it");
#endif

/* What the Swift SDK (PluginSDK/Swift) relies on. Swift imports these structs through
 * Clang, so field offsets agree by construction; these pin the scalar mappings it uses:
 * size_t and ssize_t as Int, int as Int32, and the size-first rule of every struct. */
#include "srv/swift_app.h" /* its prototypes must compile as C, too */

_Static_assert(sizeof(size_t) == sizeof(void *), "size_t is Swift's Int");
_Static_assert(sizeof(ssize_t) == sizeof(size_t), "ssize_t is Swift's Int");
_Static_assert(sizeof(int) == 4, "int is Swift's Int32");
_Static_assert(sizeof(srv_header) == 2 * sizeof(srv_str), "headers are packed name/value pairs");
_Static_assert(offsetof(srv_str, ptr) == 0 && offsetof(srv_str, len) == sizeof(void *),
               "srv_str is ptr then len");
_Static_assert(offsetof(srv_environ, size) == 0, "srv_environ starts with its size");
_Static_assert(offsetof(srv_input, size) == 0, "srv_input starts with its size");
_Static_assert(offsetof(srv_errors, size) == 0, "srv_errors starts with its size");
_Static_assert(offsetof(srv_body, size) == 0, "srv_body starts with its size");
_Static_assert(offsetof(srv_server_info, size) == 0, "srv_server_info starts with its size");
_Static_assert(offsetof(srv_exc_info, size) == 0, "srv_exc_info starts with its size");
_Static_assert(sizeof(((srv_body *)0)->kind) == sizeof(int), "srv_body.kind is an int (Int32)");
_Static_assert(SRV_BODY_EMPTY == 0 && SRV_BODY_BYTES == 1 && SRV_BODY_ITER == 2 &&
                   SRV_BODY_FILE == 3,
               "body kinds are ABI values");
_Static_assert(SRV_OK == 0 && SRV_ERROR == -1, "return codes are ABI values");
