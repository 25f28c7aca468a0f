import Glibc

/// The names in a directory, read with readdir.
enum Directory {
    /// The names in `path` (without "." and ".."), or nil when it cannot be opened.
    static func names(in path: String) -> [String]? {
        guard let dir = opendir(path) else { return nil }
        defer { closedir(dir) }
        let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        var names: [String] = []
        while let entry = readdir(dir) {
            // The name is read up to its NUL, in place: a record is d_reclen bytes, often
            // fewer than struct dirent's, so copying all of d_name reads past the buffer
            // (AddressSanitizer found it).
            let name = String(cString: (UnsafeRawPointer(entry) + nameOffset).assumingMemoryBound(to: CChar.self))
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}
