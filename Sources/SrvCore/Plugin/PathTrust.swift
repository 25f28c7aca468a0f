import Glibc

/// Who may put code into srv, checked as OpenSSH's StrictModes checks a user's keys: a
/// plugin file, and every directory above it, must belong to root or srv's user and be
/// writable by no one else. Otherwise any local user who can write there has their code
/// run as srv's user (as root, for a root srv) at the next start or HUP.
public enum PathTrust {
    /// Why `path` cannot be trusted: the file or directory at fault, and what it is. Nil
    /// when it can be, or when it does not exist (reading it says so).
    public static func problem(_ path: String, owner: uid_t = geteuid()) -> (culprit: String, found: String)? {
        guard let resolved = realpath(path, nil) else { return nil }
        var current = String(cString: resolved)
        free(resolved)
        var isTarget = true
        while true {
            var st = stat()
            guard lstat(current, &st) == 0 else { return nil }
            if st.st_uid != 0 && st.st_uid != owner {
                return (current, "owned by uid \(st.st_uid), neither root nor srv's user (uid \(owner))")
            }
            // A sticky directory (/tmp) lets no one rename or remove an entry of another user.
            let sticky = !isTarget && st.st_mode & S_ISVTX != 0
            if st.st_mode & 0o022 != 0 && !sticky {
                let who = st.st_mode & 0o002 != 0 ? "anyone" : "its group"
                return (current, "mode \(String(st.st_mode & 0o7777, radix: 8)): writable by \(who)")
            }
            guard current != "/" else { return nil }
            let parent = current[..<(current.lastIndex(of: "/") ?? current.startIndex)]
            current = parent.isEmpty ? "/" : String(parent)
            isTarget = false
        }
    }

    /// `problem` as the refusal of the plugin at `path`.
    public static func check(_ path: String) throws {
        if let p = problem(path) { throw PluginError.writableByOthers(path: path, culprit: p.culprit, found: p.found) }
    }
}
