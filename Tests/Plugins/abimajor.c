/* Refused: built for gateway ABI 2.x (the ABI major must equal srv's). */
#include "plugin.h"

TEST_DESCRIPTOR("abimajor", SRV_GATEWAY_MAGIC, 2, 0, (uint32_t)sizeof(srv_descriptor), NULL);
TEST_APP("abimajor\n")
