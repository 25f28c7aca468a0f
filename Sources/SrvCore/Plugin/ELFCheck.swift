import Glibc

/// Checks the ELF header of a plugin before `dlopen` sees it, so that a wrong file gets a
/// message that says what was expected and what was found instead of dlerror's terse text.
enum ELFCheck {
    static let etRel: UInt16 = 1, etExec: UInt16 = 2, etDyn: UInt16 = 3
    static let ptDynamic: UInt32 = 2, ptInterp: UInt32 = 3
    static let dtFlags1: Int64 = 0x6fff_fffb, df1Pie: UInt64 = 0x0800_0000

    /// The ELF class and machine of the running srv binary, which a plugin must share.
    static let host: (elfClass: UInt8, machine: UInt16) = {
        guard let bytes = try? readPrefix("/proc/self/exe", count: 20), bytes.count >= 20 else {
            return (2, 62)
        }
        return (bytes[4], UInt16(bytes[18]) | UInt16(bytes[19]) << 8)
    }()

    static func machineName(_ m: UInt16) -> String {
        switch m {
        case 3: return "x86 (EM_386)"
        case 40: return "ARM (EM_ARM)"
        case 62: return "x86-64 (EM_X86_64)"
        case 183: return "AArch64 (EM_AARCH64)"
        case 243: return "RISC-V (EM_RISCV)"
        case 8: return "MIPS (EM_MIPS)"
        case 21: return "PowerPC64 (EM_PPC64)"
        case 22: return "S/390 (EM_S390)"
        default: return "machine \(m)"
        }
    }

    static func readPrefix(_ path: String, count: Int) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw PluginError.unreadable(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: count)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, 0) }
        return Array(buffer.prefix(max(0, n)))
    }

    /// Throws a `PluginError` naming what is wrong with the file at `path`.
    static func validate(path file: String, display path: String) throws {
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let e = errno
            if e == ENOENT { throw PluginError.missingFile(path: path) }
            throw PluginError.unreadable(path: path, reason: String(cString: strerror(e)))
        }
        defer { close(fd) }
        var st = stat()
        if fstat(fd, &st) == 0, (st.st_mode & S_IFMT) != S_IFREG {
            throw PluginError.notRegularFile(path: path)
        }
        func read(_ count: Int, at offset: Int) -> [UInt8] {
            var b = [UInt8](repeating: 0, count: count)
            let n = b.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
            return Array(b.prefix(max(0, n)))
        }
        let h = read(64, at: 0)
        guard h.count >= 4, h[0] == 0x7f, h[1] == 0x45, h[2] == 0x4c, h[3] == 0x46 else {
            let shown = h.prefix(4).map { b -> String in
                (0x20..<0x7f).contains(b) ? String(UnicodeScalar(b)) : "\\x" + String(b, radix: 16)
            }.joined()
            throw PluginError.notELF(path: path, found: shown.isEmpty ? "an empty file" : "\"\(shown)\"")
        }
        guard h.count >= 52 else { throw PluginError.notELF(path: path, found: "a truncated ELF header") }
        if h[4] != host.elfClass {
            throw PluginError.wrongClass(path: path, expected: host.elfClass == 2 ? 64 : 32,
                                         found: h[4] == 2 ? 64 : (h[4] == 1 ? 32 : 0))
        }
        let machine = UInt16(h[18]) | UInt16(h[19]) << 8
        if machine != host.machine {
            throw PluginError.wrongMachine(path: path, expected: machineName(host.machine),
                                           found: machineName(machine))
        }
        let type = UInt16(h[16]) | UInt16(h[17]) << 8
        switch type {
        case etDyn: break
        case etRel: throw PluginError.notSharedObject(path: path, found: "a relocatable object file (ET_REL, the output of cc -c)")
        case etExec: throw PluginError.notSharedObject(path: path, found: "an executable (ET_EXEC)")
        default: throw PluginError.notSharedObject(path: path, found: "ELF type \(type)")
        }
        guard h[4] == 2, h.count >= 64 else { return }
        // A position-independent executable is ET_DYN too: it carries DF_1_PIE.
        func u16(_ b: [UInt8], _ o: Int) -> Int { Int(b[o]) | Int(b[o + 1]) << 8 }
        func u64(_ b: [UInt8], _ o: Int) -> UInt64 {
            (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) }
        }
        let phoff = Int(u64(h, 32)), phentsize = u16(h, 54), phnum = u16(h, 56)
        guard phentsize >= 56, phnum < 4096 else { return }
        for i in 0..<phnum {
            let ph = read(phentsize, at: phoff + i * phentsize)
            guard ph.count >= 56 else { return }
            let ptype = UInt32(truncatingIfNeeded: u64(ph, 0) & 0xffff_ffff)
            guard ptype == ptDynamic else { continue }
            let offset = Int(u64(ph, 8)), size = Int(u64(ph, 32))
            let dyn = read(min(size, 1 << 16), at: offset)
            var o = 0
            while o + 16 <= dyn.count {
                let tag = Int64(bitPattern: u64(dyn, o)), value = u64(dyn, o + 8)
                if tag == 0 { break }
                if tag == dtFlags1, value & df1Pie != 0 {
                    throw PluginError.notSharedObject(path: path, found: "a position-independent executable (it has a main; link the application with -shared instead)")
                }
                o += 16
            }
        }
    }
}
