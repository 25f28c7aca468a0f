/* Refused: a constructor aborts while the dynamic linker loads the file, before srv sees
 * the descriptor; srv must survive and report it. */
#include "plugin.h"

#include <stdlib.h>

__attribute__((constructor)) static void ctorcrash_init(void) { abort(); }

SRV_DESCRIPTOR("ctorcrash", "1.0.0", 0, NULL, NULL);
TEST_APP("ctorcrash\n")
