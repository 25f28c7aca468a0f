#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc
import Logging

/// `--apps-dir DIR`: every `lib<name>.so` or `<name>.so` in DIR is mounted at `/<name>`.
public enum AppsDirectory {
    /// The mount name for a file name, or nil when the file is not an application.
    public static func mountName(forFile file: String) -> String? {
        guard file.hasSuffix(".so"), !file.hasPrefix(".") else { return nil }
        var name = String(file.dropLast(3))
        if name.hasPrefix("lib") && name.count > 3 { name = String(name.dropFirst(3)) }
        guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." }) else { return nil }
        return name
    }

    public static func scan(_ dir: String, logger: Logger?) -> [Settings.Mount] {
        guard let files = try? FileManager.default.contentsOfDirectory(atPath: dir) else {
            logger?.error("--apps-dir \(dir): cannot read the directory")
            return []
        }
        var mounts: [String: Settings.Mount] = [:]
        for file in files.sorted() {
            guard let name = mountName(forFile: file) else { continue }
            let prefix = "/\(name)"
            // lib<name>.so wins over <name>.so when both exist.
            if mounts[prefix] != nil && !file.hasPrefix("lib") { continue }
            mounts[prefix] = Settings.Mount(prefix: prefix, path: "\(dir)/\(file)")
        }
        return mounts.values.sorted { $0.prefix < $1.prefix }
    }
}

/// `--reload`: watches the application files with inotify and asks for a reload once
/// they have stopped changing for --reload-delay seconds, so a half-copied file is never
/// loaded and a burst of changes makes one reload.
final class AppWatcher {
    let fd: Int32
    private var lastChange: Instant?
    private var delay: Double
    /// The directories watched, each with the identity (device, inode) of the directory
    /// the watch is on: the path is what counts, so a directory replaced under the same
    /// name (`mv apps apps.old; mkdir apps`) is watched anew.
    private var watched: [String: (wd: Int32, dev: UInt, ino: UInt)] = [:]
    private static let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_MODIFY | IN_ATTRIB)

    init?(settings: Settings, logger: Logger) {
        fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { logger.error("--reload: inotify is not available"); return nil }
        delay = settings.reloadDelay
        update(settings: settings)
    }

    func update(settings: Settings) {
        delay = settings.reloadDelay
        var dirs = Set(settings.mounts.map { $0.path.directoryPart })
        if let d = settings.appsDir { dirs.insert(d) }
        for d in dirs where watched[d] == nil { watch(d) }
    }

    @discardableResult
    private func watch(_ dir: String) -> Bool {
        let path = dir.isEmpty ? "." : dir
        var st = stat()
        guard stat(path, &st) == 0 else { return false }
        let wd = inotify_add_watch(fd, path, Self.mask)
        guard wd >= 0 else { return false }
        watched[dir] = (wd, UInt(st.st_dev), UInt(st.st_ino))
        return true
    }

    /// A watched path that now names another directory (or none, or one that came back)
    /// is watched again, and counts as a change.
    private func followReplacedDirectories() {
        for (dir, w) in watched {
            var st = stat()
            let exists = stat(dir.isEmpty ? "." : dir, &st) == 0
            if exists && UInt(st.st_dev) == w.dev && UInt(st.st_ino) == w.ino { continue }
            if !exists && w.wd < 0 { continue }  // still gone
            if w.wd >= 0 { inotify_rm_watch(fd, w.wd) }
            watched[dir] = nil
            if exists { watch(dir) } else { watched[dir] = (-1, 0, 0) }
            lastChange = Instant.now()
        }
    }

    /// Drains events; true when a reload is due.
    func poll() -> Bool {
        followReplacedDirectories()
        var buffer = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            var offset = 0
            while offset + 16 <= n {
                let nameLength = buffer.withUnsafeBytes { Int($0.load(fromByteOffset: offset + 12, as: UInt32.self)) }
                let nameBytes = buffer[(offset + 16)..<min(n, offset + 16 + nameLength)]
                let name = String(decoding: nameBytes.prefix(while: { $0 != 0 }), as: UTF8.self)
                if name.hasSuffix(".so") { lastChange = Instant.now() }
                offset += 16 + nameLength
            }
        }
        if let last = lastChange, Instant.now().seconds(since: last) >= delay {
            lastChange = nil
            return true
        }
        return false
    }
}
