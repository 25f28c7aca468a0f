import CSrvSystem
import Glibc

/// A private copy of a plugin file's content. Workers load the snapshot, never the user's
/// file, so `cp new.so libblog.so` over a running file cannot corrupt mapped code, and the
/// SHA-256 of the content is the version users see in logs and `srv status`.
///
/// The copy is a sealed memory file (memfd) that the master holds open; a worker or check
/// process inherits its descriptor and loads it through /proc/self/fd. Nothing is on disk:
/// a tmp cleaner, or logind removing $XDG_RUNTIME_DIR at logout, cannot take it from a
/// running server, and workers of another user (--user) need no directory they can read.
public struct Snapshot: Codable {
    /// The file the user named.
    public var source: String
    /// Hex SHA-256 of the content.
    public var hash: String
    /// The content's descriptor in this process: the master's own, or the one a worker
    /// inherited (then `owner` is nil).
    public private(set) var descriptor: CInt
    /// Keeps the master's descriptor open as long as a generation or a check uses it.
    private var owner: SealedFile?

    private enum CodingKeys: String, CodingKey { case source, hash, descriptor }

    public var shortHash: String { String(hash.prefix(12)) }

    /// What `dlopen` loads in this process.
    public var path: String { "/proc/self/fd/\(descriptor)" }

    /// Reads `source` into a sealed memory file named after it. `strict`: refuse a file
    /// others may write, or one reached through a place they may write (PathTrust); the
    /// file is judged again on the descriptor read, so a swap after the check is caught.
    public static func take(of source: String, strict: Bool) throws -> Snapshot {
        if strict { try PathTrust.check(source) }
        let bytes = try readFile(source, strict: strict)
        let hash = sha256(bytes)
        // A memfd's name holds 249 bytes; the name is for people reading /proc.
        let base = String((source.split(separator: "/").last.map(String.init) ?? "plugin.so").utf8.prefix(200)) ?? "plugin.so"
        let fd = bytes.withUnsafeBytes { srv_sys_sealed_file("srv-\(hash.prefix(12))-\(base)", $0.baseAddress, $0.count) }
        if fd < 0 { throw PluginError.snapshotFailed(path: source, reason: "memfd_create: \(String(cString: strerror(errno)))") }
        return Snapshot(source: source, hash: hash, descriptor: fd, owner: SealedFile(fd))
    }

    /// This snapshot as a child process sees it, which inherited it at `descriptor`.
    public func inherited(at descriptor: CInt) -> Snapshot {
        Snapshot(source: source, hash: hash, descriptor: descriptor, owner: nil)
    }

    /// A snapshot for tests and for a process that already holds the content at `descriptor`.
    init(source: String, hash: String, descriptor: CInt, owner: SealedFile? = nil) {
        self.source = source
        self.hash = hash
        self.descriptor = descriptor
        self.owner = owner
    }

    static func readFile(_ path: String, strict: Bool = false) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { throw PluginError.missingFile(path: path) }
            throw PluginError.unreadable(path: path, reason: String(cString: strerror(errno)))
        }
        defer { close(fd) }
        var st = stat()
        if fstat(fd, &st) == 0, (st.st_mode & S_IFMT) != S_IFREG { throw PluginError.notRegularFile(path: path) }
        if strict, let p = PathTrust.problem(of: st, at: path, owner: geteuid(), isTarget: true) {
            throw PluginError.writableByOthers(path: path, problem: p)
        }
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
}

/// Two snapshots are the same build of the same file, whichever process holds them.
extension Snapshot: Equatable {
    public static func == (a: Snapshot, b: Snapshot) -> Bool { a.source == b.source && a.hash == b.hash }
}

/// A descriptor closed when the last snapshot that uses it is gone.
final class SealedFile {
    let fd: CInt
    init(_ fd: CInt) { self.fd = fd }
    deinit { close(fd) }
}
