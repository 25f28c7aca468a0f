import CSrvSystem
import Glibc

/// A private, content-addressed copy of a plugin file. Workers load the snapshot, never the
/// user's file, so `cp new.so libblog.so` over a running file cannot corrupt mapped code,
/// and the SHA-256 of the content is the version users see in logs and `srv status`.
public struct Snapshot: Equatable, Codable {
    /// The file the user named.
    public var source: String
    /// The private copy workers load.
    public var path: String
    /// Hex SHA-256 of the content.
    public var hash: String

    public var shortHash: String { String(hash.prefix(12)) }

    /// Copies `source` into `directory` (which must exist) under its hash, atomically with
    /// rename. A file already there is reused only when its content has the same hash.
    public static func take(of source: String, into directory: String) throws -> Snapshot {
        let bytes: [UInt8]
        do { bytes = try readFile(source) } catch let e as PluginError { throw e }
        let hash = sha256(bytes)
        var base = source.split(separator: "/").last.map(String.init) ?? "plugin.so"
        if !base.hasSuffix(".so") { base += ".so" }
        let path = "\(directory)/\(hash.prefix(16))-\(base)"
        if let existing = try? readFile(path), existing.count == bytes.count, sha256(existing) == hash {
            return Snapshot(source: source, path: path, hash: hash)
        }
        let temp = "\(path).\(getpid()).tmp"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o755)
        if fd < 0 { throw PluginError.snapshotFailed(path: source, reason: "\(temp): \(String(cString: strerror(errno)))") }
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + written, bytes.count - written) }
            if n <= 0 { close(fd); unlink(temp); throw PluginError.snapshotFailed(path: source, reason: "write failed: \(String(cString: strerror(errno)))") }
            written += n
        }
        close(fd)
        if rename(temp, path) != 0 {
            unlink(temp)
            throw PluginError.snapshotFailed(path: source, reason: "rename failed: \(String(cString: strerror(errno)))")
        }
        return Snapshot(source: source, path: path, hash: hash)
    }

    static func readFile(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { throw PluginError.missingFile(path: path) }
            throw PluginError.unreadable(path: path, reason: String(cString: strerror(errno)))
        }
        defer { close(fd) }
        var st = stat()
        if fstat(fd, &st) == 0, (st.st_mode & S_IFMT) != S_IFREG { throw PluginError.notRegularFile(path: path) }
        var out: [UInt8] = []
        guard FileDescriptor.readAvailable(fd, into: &out) else {
            throw PluginError.unreadable(path: path, reason: String(cString: strerror(errno)))
        }
        return out
    }

    static func sha256(_ bytes: [UInt8]) -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        bytes.withUnsafeBytes { srv_sys_sha256($0.baseAddress, $0.count, &digest) }
        return digest.map { String(format2: $0) }.joined()
    }

    /// Deletes the snapshot files in `directory` that are not in `keeping` (paths); returns
    /// how many. Only the master that owns the directory calls it.
    @discardableResult
    public static func removeUnreferenced(in directory: String, keeping: Set<String>) -> Int {
        var removed = 0
        for name in Directory.names(in: directory) ?? [] where name.hasSuffix(".so") || name.hasSuffix(".tmp") {
            let path = "\(directory)/\(name)"
            if !keeping.contains(path), unlink(path) == 0 { removed += 1 }
        }
        return removed
    }
}

extension String {
    init(format2 byte: UInt8) {
        let digits = Array("0123456789abcdef")
        self = String([digits[Int(byte >> 4)], digits[Int(byte & 15)]])
    }
}
