/* Refused: a position-independent executable (ET_DYN with DF_1_PIE), not a shared
 * object, even though it defines both symbols. Built with -fPIE -pie. */
#include "plugin.h"

#include <stdio.h>

SRV_DESCRIPTOR("executable", "1.0.0", 0, NULL, NULL);
TEST_APP("executable\n")

int main(void) {
    puts("libexecutable.so is a program, not a plugin");
    return 0;
}
