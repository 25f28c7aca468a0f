/// The version of the Swift compiler that built this module, for example "6.3.1".
///
/// Swift has no stable ABI on Linux: a Swift plugin must be built by the same toolchain as
/// the srv that loads it, because both use one Swift runtime in one process (srv's). The
/// SDK stamps this value into every Swift plugin (`srv_swift_toolchain`, see GATEWAY.md)
/// and srv compares it with its own before it calls any of the plugin's code.
///
/// Swift offers the compiler's version only to `#if compiler(...)`, so the value is found
/// by a descending ladder of those checks. Versions past the top of the ladder all read
/// as its top; extend it when a new toolchain comes out.
#if compiler(>=7.2.4)
public let swiftToolchainVersion: StaticString = "7.2.4"
#elseif compiler(>=7.2.3)
public let swiftToolchainVersion: StaticString = "7.2.3"
#elseif compiler(>=7.2.2)
public let swiftToolchainVersion: StaticString = "7.2.2"
#elseif compiler(>=7.2.1)
public let swiftToolchainVersion: StaticString = "7.2.1"
#elseif compiler(>=7.2.0)
public let swiftToolchainVersion: StaticString = "7.2.0"
#elseif compiler(>=7.1.4)
public let swiftToolchainVersion: StaticString = "7.1.4"
#elseif compiler(>=7.1.3)
public let swiftToolchainVersion: StaticString = "7.1.3"
#elseif compiler(>=7.1.2)
public let swiftToolchainVersion: StaticString = "7.1.2"
#elseif compiler(>=7.1.1)
public let swiftToolchainVersion: StaticString = "7.1.1"
#elseif compiler(>=7.1.0)
public let swiftToolchainVersion: StaticString = "7.1.0"
#elseif compiler(>=7.0.4)
public let swiftToolchainVersion: StaticString = "7.0.4"
#elseif compiler(>=7.0.3)
public let swiftToolchainVersion: StaticString = "7.0.3"
#elseif compiler(>=7.0.2)
public let swiftToolchainVersion: StaticString = "7.0.2"
#elseif compiler(>=7.0.1)
public let swiftToolchainVersion: StaticString = "7.0.1"
#elseif compiler(>=7.0.0)
public let swiftToolchainVersion: StaticString = "7.0.0"
#elseif compiler(>=6.5.4)
public let swiftToolchainVersion: StaticString = "6.5.4"
#elseif compiler(>=6.5.3)
public let swiftToolchainVersion: StaticString = "6.5.3"
#elseif compiler(>=6.5.2)
public let swiftToolchainVersion: StaticString = "6.5.2"
#elseif compiler(>=6.5.1)
public let swiftToolchainVersion: StaticString = "6.5.1"
#elseif compiler(>=6.5.0)
public let swiftToolchainVersion: StaticString = "6.5.0"
#elseif compiler(>=6.4.4)
public let swiftToolchainVersion: StaticString = "6.4.4"
#elseif compiler(>=6.4.3)
public let swiftToolchainVersion: StaticString = "6.4.3"
#elseif compiler(>=6.4.2)
public let swiftToolchainVersion: StaticString = "6.4.2"
#elseif compiler(>=6.4.1)
public let swiftToolchainVersion: StaticString = "6.4.1"
#elseif compiler(>=6.4.0)
public let swiftToolchainVersion: StaticString = "6.4.0"
#elseif compiler(>=6.3.4)
public let swiftToolchainVersion: StaticString = "6.3.4"
#elseif compiler(>=6.3.3)
public let swiftToolchainVersion: StaticString = "6.3.3"
#elseif compiler(>=6.3.2)
public let swiftToolchainVersion: StaticString = "6.3.2"
#elseif compiler(>=6.3.1)
public let swiftToolchainVersion: StaticString = "6.3.1"
#elseif compiler(>=6.3.0)
public let swiftToolchainVersion: StaticString = "6.3.0"
#elseif compiler(>=6.2.4)
public let swiftToolchainVersion: StaticString = "6.2.4"
#elseif compiler(>=6.2.3)
public let swiftToolchainVersion: StaticString = "6.2.3"
#elseif compiler(>=6.2.2)
public let swiftToolchainVersion: StaticString = "6.2.2"
#elseif compiler(>=6.2.1)
public let swiftToolchainVersion: StaticString = "6.2.1"
#elseif compiler(>=6.2.0)
public let swiftToolchainVersion: StaticString = "6.2.0"
#elseif compiler(>=6.1.4)
public let swiftToolchainVersion: StaticString = "6.1.4"
#elseif compiler(>=6.1.3)
public let swiftToolchainVersion: StaticString = "6.1.3"
#elseif compiler(>=6.1.2)
public let swiftToolchainVersion: StaticString = "6.1.2"
#elseif compiler(>=6.1.1)
public let swiftToolchainVersion: StaticString = "6.1.1"
#elseif compiler(>=6.1.0)
public let swiftToolchainVersion: StaticString = "6.1.0"
#elseif compiler(>=6.0.4)
public let swiftToolchainVersion: StaticString = "6.0.4"
#elseif compiler(>=6.0.3)
public let swiftToolchainVersion: StaticString = "6.0.3"
#elseif compiler(>=6.0.2)
public let swiftToolchainVersion: StaticString = "6.0.2"
#elseif compiler(>=6.0.1)
public let swiftToolchainVersion: StaticString = "6.0.1"
#elseif compiler(>=6.0.0)
public let swiftToolchainVersion: StaticString = "6.0.0"
#elseif compiler(>=5.10.4)
public let swiftToolchainVersion: StaticString = "5.10.4"
#elseif compiler(>=5.10.3)
public let swiftToolchainVersion: StaticString = "5.10.3"
#elseif compiler(>=5.10.2)
public let swiftToolchainVersion: StaticString = "5.10.2"
#elseif compiler(>=5.10.1)
public let swiftToolchainVersion: StaticString = "5.10.1"
#elseif compiler(>=5.10.0)
public let swiftToolchainVersion: StaticString = "5.10.0"
#elseif compiler(>=5.9.4)
public let swiftToolchainVersion: StaticString = "5.9.4"
#elseif compiler(>=5.9.3)
public let swiftToolchainVersion: StaticString = "5.9.3"
#elseif compiler(>=5.9.2)
public let swiftToolchainVersion: StaticString = "5.9.2"
#elseif compiler(>=5.9.1)
public let swiftToolchainVersion: StaticString = "5.9.1"
#elseif compiler(>=5.9.0)
public let swiftToolchainVersion: StaticString = "5.9.0"
#else
public let swiftToolchainVersion: StaticString = "older than 5.9"
#endif
