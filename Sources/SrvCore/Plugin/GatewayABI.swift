import SrvGateway
import SrvToolchain

/// The gateway ABI this srv implements, read from srv/gateway.h.
public enum GatewayABI {
    public static let magic: UInt32 = SRV_GATEWAY_MAGIC
    public static let major = Int(SRV_ABI_MAJOR)
    public static let minor = Int(SRV_ABI_MINOR)
    /// The size of the ABI 1.0 descriptor; a smaller one is refused. Not this header's
    /// size: a struct grows with each minor, and a 1.0 plugin must still load.
    public static let minimumDescriptorSize = Int(SRV_DESCRIPTOR_SIZE_1_0)
    public static let serverVersion = "srv/0.1.0"
    /// The Swift compiler that built srv; a Swift plugin must come from the same one.
    public static let swiftToolchain = "\(swiftToolchainVersion)"
    /// What `srv --version` prints.
    public static var versionText: String {
        "srv \(serverVersion.dropFirst(4)) (gateway ABI \(major).\(minor), Swift \(swiftToolchain))"
    }
}
