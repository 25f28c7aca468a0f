/* Refused: the load hook dies of SIGSEGV; srv must survive and report it. */
#include "plugin.h"

#include <signal.h>

static int loadcrash_load(const srv_server_info *info, char *error, size_t error_size) {
    (void)info;
    (void)error;
    (void)error_size;
    raise(SIGSEGV);
    return SRV_ERROR;
}

SRV_DESCRIPTOR("loadcrash", "1.0.0", 0, loadcrash_load, NULL);
TEST_APP("loadcrash\n")
