/* Refused: the load hook fails with its own message, which srv must show. */
#include "plugin.h"

#include <stdio.h>

static int loadfail_load(const srv_server_info *info, char *error, size_t error_size) {
    (void)info;
    snprintf(error, error_size, "cannot open database /nonexistent/blog.db");
    return SRV_ERROR;
}

SRV_DESCRIPTOR("loadfail", "1.0.0", 0, loadfail_load, NULL);
TEST_APP("loadfail\n")
