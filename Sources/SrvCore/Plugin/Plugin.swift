#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc
import SrvGateway

/// An application loaded into this process: a validated descriptor and its entry point.
///
/// Loading follows the gateway spec: check the ELF header, `dlopen` the snapshot with
/// `RTLD_NOW | RTLD_LOCAL`, validate the descriptor before calling any plugin code, then run
/// the load hook. A plugin is never `dlclose`d (Swift and C++ code cannot be unloaded safely).
public final class Plugin {
    public let path: String
    public let snapshot: Snapshot?
    public let descriptor: UnsafePointer<srv_descriptor>
    public let app: srv_app_fn
    public let name: String
    public let version: String
    public let abiMajor: Int
    public let abiMinor: Int
    public let threadSafe: Bool

    /// Loads and validates the plugin at `file` (a snapshot path, or any path for tests).
    /// - Parameters:
    ///   - file: the file to `dlopen`.
    ///   - displayPath: the path named in error messages (the user's file, not the snapshot).
    ///   - snapshot: the snapshot `file` is, when it is one.
    public convenience init(file: String, displayPath: String? = nil, snapshot: Snapshot? = nil) throws {
        let shown = displayPath ?? file
        try ELFCheck.validate(path: file, display: shown)
        _ = dlerror()
        guard let handle = dlopen(file, RTLD_NOW | RTLD_LOCAL) else {
            let message = dlerror().map { String(cString: $0) } ?? "unknown dlopen error"
            throw PluginError.dlopenFailed(path: shown, dlerror: message.replacingSnapshot(file, with: shown))
        }
        guard let symbol = dlsym(handle, SRV_DESCRIPTOR_SYMBOL) else {
            throw PluginError.missingDescriptor(path: shown)
        }
        let raw = UnsafeRawPointer(symbol)
        let magic = raw.loadUnaligned(as: UInt32.self)
        guard magic == GatewayABI.magic else { throw PluginError.badMagic(path: shown, found: magic) }
        let major = Int(raw.loadUnaligned(fromByteOffset: 4, as: UInt16.self))
        let minor = Int(raw.loadUnaligned(fromByteOffset: 6, as: UInt16.self))
        guard major == GatewayABI.major else { throw PluginError.abiMajorMismatch(path: shown, found: major) }
        guard minor <= GatewayABI.minor else { throw PluginError.abiMinorTooNew(path: shown, found: minor) }
        let size = Int(raw.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        guard size >= GatewayABI.minimumDescriptorSize else {
            throw PluginError.descriptorTooSmall(path: shown, found: size, expected: GatewayABI.minimumDescriptorSize)
        }
        guard let entry = dlsym(handle, SRV_APP_SYMBOL) else { throw PluginError.missingEntryPoint(path: shown) }
        if let stamp = dlsym(handle, SRV_SWIFT_TOOLCHAIN_SYMBOL) {
            typealias StampFunction = @convention(c) () -> UnsafePointer<CChar>?
            let found = unsafeBitCast(stamp, to: StampFunction.self)().map { String(cString: $0) } ?? "(unknown)"
            let expected = GatewayABI.swiftToolchain
            guard found == expected else {
                throw PluginError.swiftToolchainMismatch(path: shown, found: found, expected: expected)
            }
        }
        self.init(descriptor: UnsafePointer(symbol.assumingMemoryBound(to: srv_descriptor.self)),
                  app: unsafeBitCast(entry, to: srv_app_fn.self), path: shown, snapshot: snapshot)
    }

    /// An application already in this process (validated, or compiled in): its descriptor
    /// and entry point. The unit tests bind a function of theirs this way, without dlopen.
    init(descriptor: UnsafePointer<srv_descriptor>, app: @escaping srv_app_fn, path: String, snapshot: Snapshot? = nil) {
        self.path = path
        self.snapshot = snapshot
        self.descriptor = descriptor
        self.app = app
        self.name = descriptor.pointee.name.map { String(cString: $0) } ?? (path.split(separator: "/").last.map(String.init) ?? path)
        self.version = descriptor.pointee.version.map { String(cString: $0) } ?? ""
        self.abiMajor = Int(descriptor.pointee.abi_major)
        self.abiMinor = Int(descriptor.pointee.abi_minor)
        self.threadSafe = descriptor.pointee.flags & SRV_FLAG_THREAD_SAFE != 0
    }

    /// Runs the plugin's load hook, if it has one.
    public func runLoadHook(mount: String, multithread: Bool, multiprocess: Bool) throws {
        guard let load = descriptor.pointee.load else { return }
        let serverVersion = strdup(GatewayABI.serverVersion), appPath = strdup(path), mountC = strdup(mount)
        defer { free(serverVersion); free(appPath); free(mountC) }
        var info = srv_server_info(
            size: MemoryLayout<srv_server_info>.size, abi_major: Int32(GatewayABI.major),
            abi_minor: Int32(GatewayABI.minor), server_version: serverVersion, app_path: appPath,
            mount: mountC, worker_pid: getpid(), multithread: multithread ? 1 : 0,
            multiprocess: multiprocess ? 1 : 0)
        var message = [CChar](repeating: 0, count: 1024)
        let rc = load(&info, &message, message.count - 1)
        if rc != SRV_OK {
            let text = String(cString: message)
            throw PluginError.loadHookFailed(path: path, app: name, message: text.isEmpty ? "it returned \(rc) without a message" : text)
        }
    }

    /// Runs the unload hook, if any. The library stays mapped.
    public func runUnloadHook() {
        descriptor.pointee.unload?()
    }
}

extension String {
    func replacingSnapshot(_ snapshot: String, with original: String) -> String {
        guard snapshot != original, !snapshot.isEmpty else { return self }
        var result = ""
        var rest = Substring(self)
        while let range = rest.firstRange(of: snapshot) {
            result += rest[..<range.lowerBound] + original
            rest = rest[range.upperBound...]
        }
        return result + rest
    }
}
