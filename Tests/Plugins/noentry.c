/* Refused: exports srv_gateway_descriptor but no srv_gateway_app. */
#include "plugin.h"

SRV_DESCRIPTOR("noentry", "1.0.0", 0, NULL, NULL);
