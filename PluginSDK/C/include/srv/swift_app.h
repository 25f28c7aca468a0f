/*
 * srv Swift SDK glue: the one-line export of an application written in Swift.
 *
 * A Swift plugin package has two targets linked into one shared object: the Swift
 * application (depending on the SrvPlugin module) and a one-file C target that exports
 * the gateway symbols:
 *
 *     // Swift, in the application target:
 *     import SrvPlugin
 *     @_cdecl("blog_app") public func blogApp() -> UnsafeMutableRawPointer { export(Blog()) }
 *
 *     // C, the whole of the export target's export.c:
 *     #include <srv/swift_app.h>
 *     SRV_SWIFT_APP("blog", "1.0.0", SRV_FLAG_THREAD_SAFE, blog_app);
 *
 * SRV_SWIFT_APP(name, version, flags, factory) expands to the srv_gateway_descriptor
 * (SRV_DESCRIPTOR with a load and an unload hook) and srv_gateway_app. The load hook
 * calls factory(), keeps the opaque handle it returns, and hands it to srv_swift_load,
 * which runs the application's load(_:); srv_gateway_app forwards every request to
 * srv_swift_serve and the unload hook calls srv_swift_unload. Use it once per shared
 * object, at file scope. The factory is a C symbol the Swift code defines with @_cdecl;
 * this macro declares it as `void *factory(void)`.
 */
#ifndef SRV_SWIFT_APP_H
#define SRV_SWIFT_APP_H

#include "gateway.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Defined by the Swift SDK (module SrvPlugin, Export.swift) with @_cdecl. `handle` is the
 * value the application's factory returned (SrvPlugin's export(_:)); NULL makes
 * srv_swift_load fail with a message and srv_swift_serve return SRV_ERROR.
 */

/** Runs the application's load(_:): SRV_OK, or SRV_ERROR with the error's description. */
int srv_swift_load(void *handle, const srv_server_info *info, char *error, size_t error_size);

/** Serves one request with the application's handle(_:); the srv_app_fn contract. */
int srv_swift_serve(void *handle, const srv_environ *environ,
                    srv_start_response_fn start_response, srv_body *body);

/** Runs the application's unload(). */
void srv_swift_unload(void *handle);

#ifdef __cplusplus
}
#define SRV_SWIFT_APP_EXTERN_C extern "C"
#else
#define SRV_SWIFT_APP_EXTERN_C extern
#endif

/* The descriptor comes last so that the semicolon after SRV_SWIFT_APP(...) ends it. */
#define SRV_SWIFT_APP(app_name, app_version, app_flags, factory)                             \
    SRV_SWIFT_APP_EXTERN_C void *factory(void);                                               \
    static void *srv_swift_app_handle;                                                        \
    static int srv_swift_app_load(const srv_server_info *info, char *error,                   \
                                  size_t error_size) {                                        \
        srv_swift_app_handle = factory();                                                     \
        return srv_swift_load(srv_swift_app_handle, info, error, error_size);                 \
    }                                                                                         \
    static void srv_swift_app_unload(void) { srv_swift_unload(srv_swift_app_handle); }        \
    int srv_gateway_app(const srv_environ *environ, srv_start_response_fn start_response,     \
                        srv_body *body) {                                                     \
        return srv_swift_serve(srv_swift_app_handle, environ, start_response, body);          \
    }                                                                                         \
    SRV_DESCRIPTOR(app_name, app_version, app_flags, srv_swift_app_load, srv_swift_app_unload)

#endif /* SRV_SWIFT_APP_H */
