/* Refused: built for gateway ABI 1.99, newer than srv's. */
#include "plugin.h"

TEST_DESCRIPTOR("abiminor", SRV_GATEWAY_MAGIC, SRV_ABI_MAJOR, 99,
                (uint32_t)sizeof(srv_descriptor), NULL);
TEST_APP("abiminor\n")
