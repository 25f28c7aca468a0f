/// Why srv refused a plugin. Each message names the file, what srv expected, what it found
/// and what to do, in the manner of Postgres' and nginx's module checks.
public enum PluginError: Error, CustomStringConvertible, Equatable {
    case missingFile(path: String)
    case unreadable(path: String, reason: String)
    case notRegularFile(path: String)
    case notELF(path: String, found: String)
    case wrongClass(path: String, expected: Int, found: Int)
    case wrongMachine(path: String, expected: String, found: String)
    case notSharedObject(path: String, found: String)
    case dlopenFailed(path: String, dlerror: String)
    case missingDescriptor(path: String)
    case missingEntryPoint(path: String)
    case badMagic(path: String, found: UInt32)
    case abiMajorMismatch(path: String, found: Int)
    case abiMinorTooNew(path: String, found: Int)
    case descriptorTooSmall(path: String, found: Int, expected: Int)
    case swiftToolchainMismatch(path: String, found: String, expected: String)
    case loadHookFailed(path: String, app: String, message: String)
    case crashed(path: String, signal: String)
    case hung(path: String, seconds: Double)
    case snapshotFailed(path: String, reason: String)
    case writableByOthers(path: String, problem: PathTrust.Problem)

    /// A short, stable name for the cause, used in logs, `srv status` and JSON output.
    public var reason: String {
        switch self {
        case .missingFile: return "missing-file"
        case .unreadable: return "unreadable"
        case .notRegularFile: return "not-a-file"
        case .notELF: return "not-elf"
        case .wrongClass: return "wrong-elf-class"
        case .wrongMachine: return "wrong-machine"
        case .notSharedObject: return "not-shared-object"
        case .dlopenFailed: return "undefined-symbols"
        case .missingDescriptor: return "missing-descriptor"
        case .missingEntryPoint: return "missing-entry-point"
        case .badMagic: return "bad-magic"
        case .abiMajorMismatch: return "abi-major-mismatch"
        case .abiMinorTooNew: return "abi-minor-too-new"
        case .descriptorTooSmall: return "descriptor-too-small"
        case .swiftToolchainMismatch: return "swift-toolchain-mismatch"
        case .loadHookFailed: return "load-hook-failed"
        case .crashed: return "crashed"
        case .hung: return "hung"
        case .snapshotFailed: return "snapshot-failed"
        case .writableByOthers: return "writable-by-others"
        }
    }

    /// The message with its reason name, as logs and `srv status` show a refusal.
    public var withReason: String { "\(description) [\(reason)]" }

    public var description: String {
        let abi = "\(GatewayABI.major).\(GatewayABI.minor)"
        switch self {
        case .missingFile(let p):
            return "\(p): no such file; expected a shared object (lib<name>.so) built against srv/gateway.h. Check the path."
        case .unreadable(let p, let r):
            return "\(p): cannot read the file (\(r)); check its permissions."
        case .notRegularFile(let p):
            return "\(p): expected a regular file, found a directory or special file."
        case .notELF(let p, let found):
            return "\(p): expected an ELF shared object (a file starting with \\x7fELF), found \(found). Build it with `cc -shared -fPIC`."
        case .wrongClass(let p, let e, let f):
            return "\(p): expected a \(e)-bit ELF file like srv itself, found a \(f == 0 ? "file of unknown class" : "\(f)-bit one"). Rebuild the plugin for this machine."
        case .wrongMachine(let p, let e, let f):
            return "\(p): expected code for \(e) like srv itself, found code for \(f). Rebuild the plugin on or for this machine."
        case .notSharedObject(let p, let f):
            return "\(p): expected a shared object (ELF type ET_DYN), found \(f). Link it with `cc -shared -fPIC`."
        case .dlopenFailed(let p, let e):
            return "\(p): the dynamic linker refused it: \(e). Every symbol must resolve when the plugin loads (srv uses RTLD_NOW); link the missing library or define the symbol."
        case .missingDescriptor(let p):
            return "\(p): expected an exported symbol `srv_gateway_descriptor`, found none. Declare it with SRV_DESCRIPTOR(...) from srv/gateway.h (and keep it visible with SRV_EXPORT when building with -fvisibility=hidden)."
        case .missingEntryPoint(let p):
            return "\(p): expected an exported function `srv_gateway_app`, found none. Define it with the SRV_EXPORT prototype from srv/gateway.h."
        case .badMagic(let p, let f):
            return "\(p): srv_gateway_descriptor starts with magic 0x\(String(f, radix: 16)), expected 0x\(String(GatewayABI.magic, radix: 16)) (SRV_GATEWAY_MAGIC). Declare the descriptor with SRV_DESCRIPTOR(...)."
        case .abiMajorMismatch(let p, let f):
            return "\(p): built for gateway ABI \(f).x, this srv provides ABI \(abi). Rebuild the plugin against this srv's srv/gateway.h."
        case .abiMinorTooNew(let p, let f):
            return "\(p): built for gateway ABI \(GatewayABI.major).\(f), newer than this srv's ABI \(abi). Upgrade srv or rebuild the plugin against this srv's srv/gateway.h."
        case .descriptorTooSmall(let p, let f, let e):
            return "\(p): srv_gateway_descriptor is \(f) bytes, expected at least \(e) for ABI \(GatewayABI.major).0. Declare it with SRV_DESCRIPTOR(...) from srv/gateway.h."
        case .swiftToolchainMismatch(let p, let f, let e):
            return "\(p): a Swift plugin built by Swift \(f), but this srv was built by Swift \(e); Swift has no stable ABI on Linux, so srv and its Swift plugins must come from one toolchain. Rebuild the plugin with Swift \(e) (or run an srv built by Swift \(f))."
        case .loadHookFailed(let p, let app, let m):
            return "\(p): the load hook of app '\(app)' failed: \(m)"
        case .crashed(let p, let s):
            return "\(p): the plugin crashed with \(s) while loading (in a constructor or its load hook)."
        case .hung(let p, let s):
            return "\(p): the plugin did not finish loading within \(Int(s)) s (a constructor or its load hook hangs)."
        case .snapshotFailed(let p, let r):
            return "\(p): cannot make a private snapshot copy: \(r)."
        case .writableByOthers(let p, let problem):
            return "\(p): \(problem.explanation(of: p))"
        }
    }
}
