/* Refused: the descriptor's magic is 0xdeadbeef, not SRV_GATEWAY_MAGIC. */
#include "plugin.h"

TEST_DESCRIPTOR("badmagic", 0xdeadbeefu, SRV_ABI_MAJOR, SRV_ABI_MINOR,
                (uint32_t)sizeof(srv_descriptor), NULL);
TEST_APP("badmagic\n")
