import SrvGateway

/// What srv tells an application's `load(_:)` about the worker process it runs in.
public struct ServerInfo {
    /// srv's version string, such as "srv/0.1.0".
    public var serverVersion: String
    /// The gateway ABI version srv speaks.
    public var abiMajor: Int
    /// The gateway ABI minor version srv speaks.
    public var abiMinor: Int
    /// The plugin file the user named (srv loads a snapshot of it).
    public var appPath: String
    /// The mount point (SCRIPT_NAME) of the application, "" when mounted at "/".
    public var mount: String
    /// The process id of the worker.
    public var workerPID: Int
    /// Whether `handle(_:)` may be called from several threads at once.
    public var isMultithreaded: Bool
    /// Whether other worker processes serve the same application.
    public var isMultiprocess: Bool

    /// Creates a description by hand, for tests.
    public init(serverVersion: String = "srv", abiMajor: Int = Int(SRV_ABI_MAJOR),
                abiMinor: Int = Int(SRV_ABI_MINOR), appPath: String = "", mount: String = "",
                workerPID: Int = 0, isMultithreaded: Bool = false, isMultiprocess: Bool = false) {
        self.serverVersion = serverVersion
        self.abiMajor = abiMajor
        self.abiMinor = abiMinor
        self.appPath = appPath
        self.mount = mount
        self.workerPID = workerPID
        self.isMultithreaded = isMultithreaded
        self.isMultiprocess = isMultiprocess
    }

    /// Copies what srv passed to the load hook.
    init(_ info: UnsafePointer<srv_server_info>) {
        let i = info.pointee
        func string(_ p: UnsafePointer<CChar>?) -> String { p.map { String(cString: $0) } ?? "" }
        self.init(serverVersion: string(i.server_version), abiMajor: Int(i.abi_major),
                  abiMinor: Int(i.abi_minor), appPath: string(i.app_path), mount: string(i.mount),
                  workerPID: Int(i.worker_pid), isMultithreaded: i.multithread != 0,
                  isMultiprocess: i.multiprocess != 0)
    }
}
