/* Refused: the load hook never returns; srv must time out and report it. */
#define _POSIX_C_SOURCE 200809L
#include "plugin.h"

#include <unistd.h>

static int loadhang_load(const srv_server_info *info, char *error, size_t error_size) {
    (void)info;
    (void)error;
    (void)error_size;
    for (;;) pause();
    return SRV_ERROR; /* not reached */
}

SRV_DESCRIPTOR("loadhang", "1.0.0", 0, loadhang_load, NULL);
TEST_APP("loadhang\n")
