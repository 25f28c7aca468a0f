import Glibc

/// Chooses the application for a path: the longest mount prefix wins, matched on whole
/// path segments ("/blog" serves "/blog" and "/blog/x", not "/blogger").
public struct Router {
    public private(set) var apps: [MountedApp]

    public init(apps: [MountedApp]) {
        // Longest prefix first, so the first match is the best one.
        self.apps = apps.sorted { $0.mount.utf8.count > $1.mount.utf8.count }
    }

    /// The app whose mount is the longest prefix of the decoded `path`, or nil.
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
