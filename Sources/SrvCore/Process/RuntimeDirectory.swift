import Glibc

/// The directory of a master's runtime files: its status file (`master-PID.json`, read by
/// `srv status`) and, in `snapshots/`, the private copies of the applications.
///
/// Default: `$RUNTIME_DIRECTORY` (systemd's RuntimeDirectory=, the place for a unit with
/// DynamicUser=yes), else `$XDG_RUNTIME_DIR/srv`, else `/tmp/srv-UID`. A directory that
/// exists must belong to srv's user and be writable by nobody else: in a shared /tmp
/// another user could otherwise plant files srv would serve.
public enum RuntimeDirectory {
    public static var defaultPath: String {
        if let dir = getenv("RUNTIME_DIRECTORY").map({ String(cString: $0) }), !dir.isEmpty {
            // systemd may list several, separated by colons; srv's is the first.
            return String(dir.split(separator: ":").first ?? Substring(dir))
        }
        if let dir = getenv("XDG_RUNTIME_DIR").map({ String(cString: $0) }), !dir.isEmpty {
            return "\(dir)/srv"
        }
        return "/tmp/srv-\(geteuid())"
    }

    /// Every place a master's status file may be, for `srv status` without a path: this
    /// user's default, systemd's runtime directories, and other users' defaults.
    public static var searchPaths: [String] {
        var paths = [defaultPath]
        for (base, prefix) in [("/run", ""), ("/tmp", "srv-")] {
            for name in Directory.names(in: base) ?? [] where !name.hasPrefix(".") && name.hasPrefix(prefix) {
                paths.append("\(base)/\(name)")
            }
        }
        if let xdg = getenv("XDG_RUNTIME_DIR") { paths.append("\(String(cString: xdg))/srv") }
        var seen = Set<String>()
        return paths.filter { seen.insert($0).inserted }
    }

    public struct Problem: Error, CustomStringConvertible {
        public let description: String
    }

    /// Creates `path` (and its parents) or checks the one that exists: a directory owned by
    /// `owner`, with no group or other write bit, and exactly `mode` when `exactMode`.
    /// Run as root for another owner, a new directory is given to that owner.
    public static func prepare(_ path: String, owner: UInt32, mode: mode_t, exactMode: Bool, what: String) throws {
        var st = stat()
        if lstat(path, &st) != 0 {
            guard errno == ENOENT else { throw Problem(description: "\(what) \(path): \(String(cString: strerror(errno)))") }
            try makeParents(of: path)
            if mkdir(path, mode) != 0 && errno != EEXIST {
                throw Problem(description: "\(what) \(path): cannot create it: \(String(cString: strerror(errno))); choose a writable place")
            }
            _ = chmod(path, mode)  // mkdir applies the umask
            if owner != geteuid() && geteuid() == 0 { _ = chown(path, owner, UInt32.max) }
            guard lstat(path, &st) == 0 else { throw Problem(description: "\(what) \(path): \(String(cString: strerror(errno)))") }
        }
        let found = st.st_mode & 0o7777
        let fix = "remove it, or choose another place (--runtime-dir)"
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            throw Problem(description: "\(what) \(path): expected a directory owned by uid \(owner), found \((st.st_mode & S_IFMT) == S_IFLNK ? "a symbolic link" : "a file"); \(fix)")
        }
        guard st.st_uid == owner else {
            throw Problem(description: "\(what) \(path): expected it to be owned by uid \(owner) (srv's user), found uid \(st.st_uid); another user could plant files there. \(fix.prefix(1).uppercased() + fix.dropFirst())")
        }
        if exactMode ? found != mode : found & 0o022 != 0 {
            throw Problem(description: "\(what) \(path): expected mode \(String(mode, radix: 8))\(exactMode ? "" : " or stricter"), found \(String(found, radix: 8)); run `chmod \(String(mode, radix: 8)) \(path)`, or \(fix)")
        }
    }

    private static func makeParents(of path: String) throws {
        var current = path.hasPrefix("/") ? "" : "."
        let parts = path.split(separator: "/")
        for part in parts.dropLast() {
            current += "/" + part
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
                throw Problem(description: "cannot create \(current): \(String(cString: strerror(errno)))")
            }
        }
    }
}
