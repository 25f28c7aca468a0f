/* Refused: exports srv_gateway_app but no srv_gateway_descriptor. */
#include "plugin.h"

TEST_APP("nodescriptor\n")
