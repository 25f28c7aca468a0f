import Glibc
import SrvGateway

/// A plugin as the request path sees it: where it is mounted and how to call it.
public final class MountedApp {
    /// The mount prefix, "" for "/" (this is SCRIPT_NAME).
    public let mount: String
    public let plugin: Plugin
    /// srv_str values that are the same for every request of this app.
    let scriptName: CString
    let appHash: CString
    /// Where its requests count in the scoreboard (RequestMetrics: 1 + its position).
    let metricsSlot: Int

    public init(mount: String, plugin: Plugin, metricsSlot: Int = 0) {
        self.mount = mount
        self.plugin = plugin
        self.metricsSlot = metricsSlot
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
