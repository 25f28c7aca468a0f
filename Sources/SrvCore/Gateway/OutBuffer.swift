import Glibc
import NIOCore

/// The response as it is built: plain memory with inlined appends. Many small ByteBuffer
/// writes cost a few hundred instructions each (uniqueness and capacity checks); building
/// here and copying once into a ByteBuffer per write is several times cheaper.
struct OutBuffer {
    private(set) var base: UnsafeMutableRawPointer
    private(set) var count = 0
    private var capacity: Int

    init(capacity: Int = 4096) {
        self.capacity = capacity
        base = .allocate(byteCount: capacity, alignment: 16)
    }

    /// Frees the memory; the owner calls this once.
    func deallocate() { base.deallocate() }

    @inline(__always) mutating func clear() { count = 0 }

    /// Empties the buffer and, after a large response, gives the memory back: a buffer that
    /// lives as long as a connection or a pooled slot keeps at most 64 KiB.
    @inline(__always) mutating func reset() {
        count = 0
        if capacity > 64 * 1024 {
            base.deallocate()
            capacity = 4096
            base = .allocate(byteCount: capacity, alignment: 16)
        }
    }

    @inline(__always) mutating func reserve(_ n: Int) {
        if count + n > capacity { grow(count + n) }
    }

    private mutating func grow(_ needed: Int) {
        var newCapacity = capacity * 2
        while newCapacity < needed { newCapacity *= 2 }
        let fresh = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 16)
        fresh.copyMemory(from: base, byteCount: count)
        base.deallocate()
        base = fresh
        capacity = newCapacity
    }

    /// Where the next byte goes: write at most what `reserve` made room for, then `advance`.
    @inline(__always) var end: UnsafeMutableRawPointer { base + count }

    @inline(__always) mutating func advance(_ n: Int) { count += n }

    @inline(__always) mutating func append(_ p: UnsafeRawPointer, _ n: Int) {
        reserve(n)
        (base + count).copyMemory(from: p, byteCount: n)
        count += n
    }

    @inline(__always) mutating func append(_ bytes: UnsafeRawBufferPointer) {
        if let p = bytes.baseAddress, bytes.count > 0 { append(p, bytes.count) }
    }

    @inline(__always) mutating func append(_ s: StaticString) {
        append(UnsafeRawPointer(s.utf8Start), s.utf8CodeUnitCount)
    }

    mutating func append(string: String) {
        var s = string
        s.withUTF8 { append(UnsafeRawBufferPointer($0)) }
    }

    mutating func appendDecimal(_ value: Int) {
        reserve(20)
        count += Self.writeDecimal(UInt64(value), to: end.assumingMemoryBound(to: UInt8.self))
    }

    /// Writes `value` in decimal at `p` (room for 20 digits); returns the digits written.
    @inline(__always)
    static func writeDecimal(_ value: UInt64, to p: UnsafeMutablePointer<UInt8>) -> Int {
        var n = 1, v = value
        while v >= 10 { v /= 10; n += 1 }
        v = value
        var i = n
        repeat { i -= 1; p[i] = UInt8(truncatingIfNeeded: 48 + v % 10); v /= 10 } while v > 0
        return n
    }

    mutating func appendHex(_ value: Int) {
        reserve(16)
        var n = 1
        while value >> (4 * n) != 0 && n < 16 { n += 1 }
        let p = (base + count).assumingMemoryBound(to: UInt8.self)
        let digits: StaticString = "0123456789abcdef"
        for i in 0..<n { p[i] = digits.utf8Start[(value >> (4 * (n - 1 - i))) & 0xf] }
        count += n
    }

    /// One copy into a ByteBuffer for the channel.
    func byteBuffer(_ allocator: ByteBufferAllocator) -> ByteBuffer {
        var b = allocator.buffer(capacity: count)
        b.writeBytes(UnsafeRawBufferPointer(start: base, count: count))
        return b
    }
}
