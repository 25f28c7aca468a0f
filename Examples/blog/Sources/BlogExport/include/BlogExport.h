/* BlogExport exports the blog's gateway symbols (srv_gateway_descriptor, srv_gateway_app)
 * from export.c with SRV_SWIFT_APP; it has no API of its own. SwiftPM wants a C target to
 * have a public include directory, hence this header. */
