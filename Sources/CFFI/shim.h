/* libffi, found through pkg-config (apt: libffi-dev). srv binds each request's callables
 * (start_response, write, input read, error write) to their request with ffi closures. */
#include <ffi.h>
