/* A "Swift plugin" whose toolchain stamp names another Swift than srv's: the stamp the
 * Swift SDK exports (srv_swift_toolchain, see srv/gateway.h), faked in C. srv must refuse
 * it and name both versions. */
#include "plugin.h"

SRV_EXPORT const char *srv_swift_toolchain(void);
const char *srv_swift_toolchain(void) { return "5.10.1"; }

SRV_DESCRIPTOR("otherswift", "1.0.0", 0, NULL, NULL);
TEST_APP("otherswift\n")
