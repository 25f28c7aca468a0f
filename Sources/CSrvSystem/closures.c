/* libffi closures: the gateway spec hands applications plain function pointers
 * (start_response, write, input read, error write) that know their request without a
 * context argument. Each request slot gets four closures once; the slot is reused. */
#include "CSrvSystem.h"

#include <ffi.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

typedef struct closure_state {
    srv_sys_request_callbacks callbacks;
    ffi_cif start_cif, write_cif, read_cif, error_cif;
    ffi_type *start_args[4], *write_args[2], *read_args[2], *error_args[2];
    ffi_closure *start_closure, *write_closure, *read_closure, *error_closure;
} closure_state;

static void start_trampoline(ffi_cif *cif, void *ret, void **args, void *user) {
    closure_state *s = (closure_state *)user;
    (void)cif;
    *(srv_write_fn *)ret = s->callbacks.start_response(
        s->callbacks.context, *(const char **)args[0], *(const srv_header **)args[1],
        *(size_t *)args[2], *(const srv_exc_info **)args[3]);
}

static void write_trampoline(ffi_cif *cif, void *ret, void **args, void *user) {
    closure_state *s = (closure_state *)user;
    (void)cif;
    /* libffi widens integral returns smaller than a register to ffi_arg. */
    *(ffi_sarg *)ret = s->callbacks.write(s->callbacks.context, *(const void **)args[0],
                                          *(size_t *)args[1]);
}

static void read_trampoline(ffi_cif *cif, void *ret, void **args, void *user) {
    closure_state *s = (closure_state *)user;
    (void)cif;
    *(ssize_t *)ret = s->callbacks.read(s->callbacks.context, *(void **)args[0], *(size_t *)args[1]);
}

static void error_trampoline(ffi_cif *cif, void *ret, void **args, void *user) {
    closure_state *s = (closure_state *)user;
    (void)cif;
    (void)ret;
    s->callbacks.error(s->callbacks.context, *(const char **)args[0], *(size_t *)args[1]);
}

_Static_assert(sizeof(size_t) == 8 && sizeof(ssize_t) == 8, "srv assumes LP64");

static int make(ffi_closure **closure, void **code, ffi_cif *cif, ffi_type *ret, ffi_type **args,
                unsigned nargs, void (*fun)(ffi_cif *, void *, void **, void *), void *user) {
    if (ffi_prep_cif(cif, FFI_DEFAULT_ABI, nargs, ret, args) != FFI_OK) return -1;
    *closure = (ffi_closure *)ffi_closure_alloc(sizeof(ffi_closure), code);
    if (*closure == NULL) return -1;
    if (ffi_prep_closure_loc(*closure, cif, fun, user, *code) != FFI_OK) return -1;
    return 0;
}

int srv_sys_closures_create(const srv_sys_request_callbacks *callbacks,
                            srv_sys_request_closures *out) {
    closure_state *s = (closure_state *)calloc(1, sizeof *s);
    void *code;
    if (s == NULL) return -1;
    s->callbacks = *callbacks;
    s->start_args[0] = &ffi_type_pointer;
    s->start_args[1] = &ffi_type_pointer;
    s->start_args[2] = &ffi_type_uint64;
    s->start_args[3] = &ffi_type_pointer;
    s->write_args[0] = &ffi_type_pointer;
    s->write_args[1] = &ffi_type_uint64;
    s->read_args[0] = &ffi_type_pointer;
    s->read_args[1] = &ffi_type_uint64;
    s->error_args[0] = &ffi_type_pointer;
    s->error_args[1] = &ffi_type_uint64;
    if (make(&s->start_closure, &code, &s->start_cif, &ffi_type_pointer, s->start_args, 4,
             start_trampoline, s) != 0) return -1;
    out->start_response = (srv_start_response_fn)code;
    if (make(&s->write_closure, &code, &s->write_cif, &ffi_type_sint32, s->write_args, 2,
             write_trampoline, s) != 0) return -1;
    out->write = (srv_write_fn)code;
    if (make(&s->read_closure, &code, &s->read_cif, &ffi_type_sint64, s->read_args, 2,
             read_trampoline, s) != 0) return -1;
    out->read = (ssize_t (*)(void *, size_t))code;
    if (make(&s->error_closure, &code, &s->error_cif, &ffi_type_void, s->error_args, 2,
             error_trampoline, s) != 0) return -1;
    out->error = (void (*)(const char *, size_t))code;
    out->state = s;
    return 0;
}

/* Inline mode (no --threads): a worker runs one application call at a time, on its event
 * loop. start_response and write are valid only during that call (the spec's lifetime for
 * them), so two plain functions that find the request through one pointer, set around the
 * call, do what the closures do, without libffi's trampolines (a quarter of srv's own
 * instructions for a hello-world request). Any thread the app hands them to sees the
 * pointer: it is published before the call and withdrawn after it. input.read and
 * errors.write live until the body's close, past the call, and stay closures. */
static closure_state *_Atomic inline_current;

static int inline_write(const void *data, size_t len) {
    closure_state *s = atomic_load_explicit(&inline_current, memory_order_acquire);
    if (s == NULL) return SRV_ERROR; /* called after srv_gateway_app returned */
    return s->callbacks.write(s->callbacks.context, data, len);
}

static srv_write_fn inline_start_response(const char *status, const srv_header *headers,
                                          size_t header_count, const srv_exc_info *exc_info) {
    closure_state *s = atomic_load_explicit(&inline_current, memory_order_acquire);
    if (s == NULL) return NULL;
    srv_write_fn w = s->callbacks.start_response(s->callbacks.context, status, headers,
                                                 header_count, exc_info);
    return w == NULL ? NULL : inline_write;
}

int srv_sys_call_inline(srv_app_fn app, const srv_sys_request_closures *closures,
                        const srv_environ *environ, srv_body *body) {
    atomic_store_explicit(&inline_current, (closure_state *)closures->state, memory_order_release);
    int rc = app(environ, inline_start_response, body);
    atomic_store_explicit(&inline_current, NULL, memory_order_release);
    return rc;
}
