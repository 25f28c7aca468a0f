import SrvGateway

/// A plugin as the request path sees it: where it is mounted and how to call it.
public final class MountedApp {
    /// The mount prefix, "" for "/" (this is SCRIPT_NAME).
    public let mount: String
    public let plugin: Plugin
    /// srv_str values that are the same for every request of this app.
    let scriptName: CString
    let appHash: CString

    public init(mount: String, plugin: Plugin) {
        self.mount = mount
        self.plugin = plugin
        self.scriptName = CString(mount)
        self.appHash = CString(plugin.snapshot?.hash ?? "")
    }
}

/// A NUL-terminated copy of a string that lives as long as its owner.
final class CString {
    let pointer: UnsafeMutablePointer<CChar>
    let count: Int
    init(_ s: String) {
        let bytes = Array(s.utf8)
        count = bytes.count
        pointer = .allocate(capacity: count + 1)
        bytes.withUnsafeBytes { raw in
            if count > 0 { UnsafeMutableRawPointer(pointer).copyMemory(from: raw.baseAddress!, byteCount: count) }
        }
        pointer[count] = 0
    }
    deinit { pointer.deallocate() }
    var str: srv_str { srv_str(ptr: pointer, len: count) }
}

/// Chooses the application for a path: the longest mount prefix wins, matched on whole
/// path segments ("/blog" serves "/blog" and "/blog/x", not "/blogger").
public struct Router {
    public private(set) var apps: [MountedApp]

    public init(apps: [MountedApp]) {
        // Longest prefix first, so the first match is the best one.
        self.apps = apps.sorted { $0.mount.utf8.count > $1.mount.utf8.count }
    }

    /// Returns the app and the length of the mount prefix within `path`.
    @inline(__always)
    public func route(_ path: UnsafeRawBufferPointer) -> MountedApp? {
        for app in apps {
            let m = app.scriptName
            if m.count == 0 { return app }
            if path.count < m.count { continue }
            if memcmp(path.baseAddress!, m.pointer, m.count) != 0 { continue }
            if path.count == m.count || path[m.count] == UInt8(ascii: "/") { return app }
        }
        return nil
    }
}

import Glibc
