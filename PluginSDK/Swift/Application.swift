/// A web application that srv serves through the Swift SDK.
///
/// Write a type that conforms, then export it with one `@_cdecl` factory in Swift and one
/// `SRV_SWIFT_APP` line in the package's C export target (see `export(_:)`):
///
///     struct Hello: Application {
///         func handle(_ request: Request) throws -> Response {
///             .text("Hello, \(request.query("name") ?? "World")!\n")
///         }
///     }
///
/// Lifecycle, per worker process: `load(_:)` once before any request, `handle(_:)` once
/// per request, `unload()` once when the worker exits gracefully. Classes and structs both
/// work; a class implements `load` and `unload` without `mutating`.
///
/// Threading: when the C export passes `SRV_FLAG_THREAD_SAFE`, srv may call `handle(_:)`
/// from several threads at once, so shared mutable state must be protected by a lock.
/// `load(_:)` and `unload()` never run concurrently with `handle(_:)`.
public protocol Application {
    /// Prepares the application in a new worker process (open databases, read settings).
    /// Throwing refuses the plugin: srv reports the error's description as the reason
    /// (and, on a reload, keeps the previous build serving). The default does nothing.
    mutating func load(_ server: ServerInfo) throws

    /// Answers one request. Throwing makes srv answer 500 Internal Server Error; the error
    /// is written to srv's error log first.
    func handle(_ request: Request) throws -> Response

    /// Releases what `load(_:)` acquired, when the worker exits gracefully. The default
    /// does nothing.
    mutating func unload()
}

extension Application {
    public mutating func load(_ server: ServerInfo) throws {}
    public mutating func unload() {}
}
