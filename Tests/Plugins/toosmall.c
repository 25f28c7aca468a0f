/* Refused: descriptor_size 8, smaller than the ABI 1.0 descriptor. */
#include "plugin.h"

TEST_DESCRIPTOR("toosmall", SRV_GATEWAY_MAGIC, SRV_ABI_MAJOR, SRV_ABI_MINOR, 8u, NULL);
TEST_APP("toosmall\n")
