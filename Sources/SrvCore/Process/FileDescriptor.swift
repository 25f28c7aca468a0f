import Glibc

/// Reading the whole of a pipe or file without caring how it arrives in pieces.
enum FileDescriptor {
    /// Appends to `bytes` what `fd` has: until EOF for a blocking fd, until it would block
    /// for a non-blocking one. Returns false on a read error other than EAGAIN.
    @discardableResult
    static func readAvailable(_ fd: Int32, into bytes: inout [UInt8]) -> Bool {
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n > 0 { bytes.append(contentsOf: chunk[0..<n]); continue }
            if n == 0 { return true }
            if errno == EINTR { continue }
            return errno == EAGAIN
        }
    }
}
