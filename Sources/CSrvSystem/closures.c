/* libffi closures: the gateway spec hands applications plain function pointers
 * (start_response, write, input read, error write) that know their request without a
 * context argument. Each request slot gets four closures once; the slot is reused. */
#include "CSrvSystem.h"

#include <ffi.h>
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
