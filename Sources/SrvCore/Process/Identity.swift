import Glibc

/// Users and groups: looking them up, and the workers' switch to `--user`/`--group`.
public enum Identity {
    /// A user by name or numeric uid: its uid and primary gid.
    public static func user(_ text: String) -> (uid: UInt32, gid: UInt32, name: String)? {
        if let pw = getpwnam(text) ?? UInt32(text).flatMap({ getpwuid($0) }) {
            return (pw.pointee.pw_uid, pw.pointee.pw_gid, String(cString: pw.pointee.pw_name))
        }
        // A numeric uid without a passwd entry (DynamicUser, containers) is still a uid.
        if let uid = UInt32(text) { return (uid, uid, text) }
        return nil
    }

    /// A group by name or numeric gid.
    public static func group(_ text: String) -> UInt32? {
        if let gr = getgrnam(text) { return gr.pointee.gr_gid }
        return UInt32(text)
    }

    /// Switches this process to `uid`/`gid` for good: supplementary groups, then the group,
    /// then the user (in that order: after setuid the others are no longer allowed).
    /// - Returns: nil on success, else what failed.
    public static func drop(uid: UInt32?, gid: UInt32?) -> String? {
        guard uid != nil || gid != nil, geteuid() == 0 else { return nil }
        let g = gid ?? getegid()
        if let uid = uid, let pw = getpwuid(uid) {
            if initgroups(pw.pointee.pw_name, g) != 0 { return "initgroups: \(String(cString: strerror(errno)))" }
        } else {
            var list = [g]
            if setgroups(1, &list) != 0 { return "setgroups: \(String(cString: strerror(errno)))" }
        }
        if setgid(g) != 0 { return "setgid(\(g)): \(String(cString: strerror(errno)))" }
        if let uid = uid, setuid(uid) != 0 { return "setuid(\(uid)): \(String(cString: strerror(errno)))" }
        return nil
    }
}
