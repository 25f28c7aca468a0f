import Glibc
import NIOCore

/// A request body, read completely before the application is called: in memory up to a
/// bound, spooled to an unlinked temporary file above it, so a large upload costs disk,
/// not the worker's memory.
struct RequestBody {
    private(set) var memory: ByteBuffer?
    private(set) var fd: Int32 = -1
    private(set) var length = 0
    let memoryLimit: Int
    let spoolDirectory: String

    init(memoryLimit: Int, spoolDirectory: String) {
        self.memoryLimit = memoryLimit
        self.spoolDirectory = spoolDirectory
    }

    /// Appends received bytes, moving to a file once the memory bound is passed.
    mutating func append(_ chunk: inout ByteBuffer) throws {
        length += chunk.readableBytes
        if fd < 0 {
            if memory == nil {
                memory = chunk
                if length <= memoryLimit { return }
            } else if length <= memoryLimit {
                memory!.writeBuffer(&chunk)
                return
            } else {
                memory!.writeBuffer(&chunk)
            }
            var template = Array("\(spoolDirectory)/srv-body-XXXXXX".utf8CString)
            fd = mkstemp(&template)
            if fd >= 0 { unlink(String(cString: template)); _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            if fd < 0 { throw SpoolError(message: "cannot create a temporary file in \(spoolDirectory): \(String(cString: strerror(errno)))") }
            var all = memory!
            memory = nil
            try writeAll(&all)
            return
        }
        try writeAll(&chunk)
    }

    private func writeAll(_ buffer: inout ByteBuffer) throws {
        while buffer.readableBytes > 0 {
            let n = buffer.withUnsafeReadableBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SpoolError(message: "cannot spool the request body: \(String(cString: strerror(errno)))")
            }
            buffer.moveReaderIndex(forwardBy: n)
        }
    }

    /// Copies up to `count` bytes at `offset` into `destination`; 0 at the end.
    func read(into destination: UnsafeMutableRawPointer, count: Int, at offset: Int) -> Int {
        let available = length - offset
        if available <= 0 || count <= 0 { return 0 }
        let n = min(available, count)
        if fd >= 0 {
            let r = pread(fd, destination, n, off_t(offset))
            return r < 0 ? -1 : r
        }
        guard let memory = memory else { return 0 }
        memory.withUnsafeReadableBytes { raw in
            destination.copyMemory(from: raw.baseAddress! + offset, byteCount: n)
        }
        return n
    }

    mutating func release() {
        if fd >= 0 { close(fd) }
        fd = -1
        memory = nil
        length = 0
    }
}

struct SpoolError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}
