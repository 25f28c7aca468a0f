#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc

/// Who may put code into srv, checked as OpenSSH's StrictModes checks a user's keys: a
/// plugin file, every directory above it and every symbolic link on the way to it must
/// belong to root or srv's user, and the file and directories must be writable by no one
/// else. Otherwise any local user who can write there has their code run as srv's user
/// (as root, for a root srv) at the next start or HUP.
public enum PathTrust {
    /// What is wrong, and where.
    public struct Problem: Equatable {
        /// The file, directory or link at fault.
        public var culprit: String
        /// What it is ("mode 777: writable by anyone").
        public var found: String

        /// The refusal of `path` explained, the same for a plugin and for an apps directory.
        public func explanation(of path: String) -> String {
            "\(culprit == path ? "it" : culprit) is \(found), so another user could put code into srv. Expected it, every directory above it and every link on the way to belong to root or srv's user and be writable by no one else: run `chmod go-w \(culprit)` (or chown it), or pass --insecure-plugins to load it anyway."
        }
    }

    /// Why `path` cannot be trusted, or nil when it can be or does not exist (reading it
    /// says so). Symbolic links are judged as given and then where they lead.
    public static func problem(_ path: String, owner: uid_t = geteuid()) -> Problem? {
        // A link another user owns could point elsewhere by the time srv reads the file.
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        var prefix = ""
        for part in absolute.split(separator: "/") {
            prefix += "/" + part
            var st = stat()
            guard lstat(prefix, &st) == 0 else { break }
            if st.st_mode & S_IFMT == S_IFLNK && !trusted(st.st_uid, owner) {
                return Problem(culprit: prefix, found: "a symbolic link owned by uid \(st.st_uid), neither root nor srv's user (uid \(owner))")
            }
        }
        guard let resolved = realpath(path, nil) else { return nil }
        var current = String(cString: resolved)
        free(resolved)
        var isTarget = true
        while true {
            var st = stat()
            guard lstat(current, &st) == 0 else {
                return Problem(culprit: current, found: "impossible to examine (\(String(cString: strerror(errno))))")
            }
            if let p = problem(of: st, at: current, owner: owner, isTarget: isTarget) { return p }
            guard current != "/" else { return nil }
            let parent = current[..<(current.lastIndex(of: "/") ?? current.startIndex)]
            current = parent.isEmpty ? "/" : String(parent)
            isTarget = false
        }
    }

    /// The owner and mode of one file or directory. A sticky directory (/tmp) above the
    /// target lets no one rename or remove another user's entry, so its write bits pass.
    static func problem(of st: stat, at path: String, owner: uid_t, isTarget: Bool) -> Problem? {
        if !trusted(st.st_uid, owner) {
            return Problem(culprit: path, found: "owned by uid \(st.st_uid), neither root nor srv's user (uid \(owner))")
        }
        let sticky = !isTarget && st.st_mode & S_ISVTX != 0
        if st.st_mode & 0o022 != 0 && !sticky {
            let who = st.st_mode & 0o002 != 0 ? "anyone" : "its group"
            return Problem(culprit: path, found: "mode \(String(st.st_mode & 0o7777, radix: 8)): writable by \(who)")
        }
        return nil
    }

    private static func trusted(_ uid: uid_t, _ owner: uid_t) -> Bool { uid == 0 || uid == owner }

    /// `problem` as the refusal of the plugin at `path`.
    public static func check(_ path: String) throws {
        if let p = problem(path) { throw PluginError.writableByOthers(path: path, problem: p) }
    }
}
