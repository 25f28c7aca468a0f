/* A correct plugin (libvalid.so): the control case, and the source of the derived files
 * libelf32.so, libbadmachine.so and librelocatable.so. */
#include "plugin.h"

SRV_DESCRIPTOR("valid", "1.0.0", 0, NULL, NULL);
TEST_APP("valid\n")
