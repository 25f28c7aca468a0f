/* Refused: needs a symbol nothing defines. `cc -shared` links it anyway; srv's dlopen
 * with RTLD_NOW fails with "undefined symbol: srv_test_missing_function". */
#include "plugin.h"

void srv_test_missing_function(void);

SRV_DESCRIPTOR("undefined", "1.0.0", 0, NULL, NULL);

int srv_gateway_app(const srv_environ *environ, srv_start_response_fn start_response,
                    srv_body *body) {
    (void)environ;
    (void)start_response;
    (void)body;
    srv_test_missing_function();
    return SRV_ERROR;
}
