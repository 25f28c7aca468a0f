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

    /// The directory snapshots live in unless configured otherwise.
    public static var defaultDirectory: String {
        let base = getenv("XDG_RUNTIME_DIR").map { String(cString: $0) } ?? "/tmp"
        return "\(base)/srv-\(getuid())/snapshots"
    }

    /// Copies `source` into `directory` under its hash (atomically, with rename).
    public static func take(of source: String, into directory: String = defaultDirectory) throws -> Snapshot {
        let bytes: [UInt8]
        do { bytes = try readFile(source) } catch let e as PluginError { throw e }
        var digest = [UInt8](repeating: 0, count: 32)
        bytes.withUnsafeBytes { srv_sys_sha256($0.baseAddress, $0.count, &digest) }
        let hash = digest.map { String(format2: $0) }.joined()
        try makeDirectories(directory)
        var base = source.split(separator: "/").last.map(String.init) ?? "plugin.so"
        if !base.hasSuffix(".so") { base += ".so" }
        let path = "\(directory)/\(hash.prefix(16))-\(base)"
        var st = stat()
        if stat(path, &st) == 0, Int(st.st_size) == bytes.count {
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

    static func makeDirectories(_ path: String) throws {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o700) != 0 && errno != EEXIST {
                throw PluginError.snapshotFailed(path: path, reason: "cannot create \(current): \(String(cString: strerror(errno)))")
            }
        }
    }
}

extension String {
    init(format2 byte: UInt8) {
        let digits = Array("0123456789abcdef")
        self = String([digits[Int(byte >> 4)], digits[Int(byte & 15)]])
    }
}
