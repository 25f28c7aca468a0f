import CSQLite
import Glibc
import Synchronization

/// One blog post as stored.
struct Post {
    var id: Int64
    var title: String
    var body: String
    /// UTC, ISO 8601: "2025-01-31T12:00:00Z".
    var createdAt: String
}

/// A storage failure, with SQLite's message.
struct StoreError: Error, CustomStringConvertible {
    var description: String
}

/// The posts table in a SQLite file: one connection per worker process, shared by the
/// request threads under a mutex (the connection itself is opened without SQLite's own
/// locking). Every query is a prepared statement with bound parameters.
final class Store: @unchecked Sendable {
    /// The database file.
    let path: String
    private let connection: Mutex<OpaquePointer?>

    /// SQLite's "copy this string now" destructor.
    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    /// Opens (creating when missing) the database at `path` and its schema; throws a
    /// message naming the path when that fails.
    init(path: String) throws {
        self.path = path
        var db: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK, let opened = db else {
            let reason = db.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(rc))
            sqlite3_close(db)
            throw StoreError(description: "cannot open the blog database \(path): \(reason)")
        }
        // Several worker processes share the file: wait for each other's locks, and let
        // readers run during a write.
        sqlite3_busy_timeout(opened, 5000)
        let setup = """
            PRAGMA journal_mode=WAL;
            CREATE TABLE IF NOT EXISTS posts(
                id INTEGER PRIMARY KEY,
                title TEXT NOT NULL,
                body TEXT NOT NULL,
                created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ','now')));
            """
        // Workers boot together: switching a new file to WAL can fail with SQLITE_BUSY
        // at once (SQLite skips the busy handler where waiting could deadlock), so retry.
        var result = sqlite3_exec(opened, setup, nil, nil, nil)
        var attempts = 0
        while (result == SQLITE_BUSY || result == SQLITE_LOCKED) && attempts < 100 {
            attempts += 1
            usleep(50_000)
            result = sqlite3_exec(opened, setup, nil, nil, nil)
        }
        if result != SQLITE_OK {
            let reason = String(cString: sqlite3_errmsg(opened))
            sqlite3_close(opened)
            throw StoreError(description: "cannot open the blog database \(path): \(reason)")
        }
        connection = Mutex(opened)
    }

    /// Every post, newest first.
    func allPosts() throws -> [Post] {
        try query("SELECT id, title, body, created_at FROM posts ORDER BY id DESC", bind: { _ in })
    }

    /// The post with this id, or nil.
    func post(id: Int64) throws -> Post? {
        try query("SELECT id, title, body, created_at FROM posts WHERE id = ?1") { stmt in
            sqlite3_bind_int64(stmt, 1, id)
        }.first
    }

    /// Stores a new post and returns it as stored.
    func create(title: String, body: String) throws -> Post {
        let sql = "INSERT INTO posts(title, body) VALUES (?1, ?2) RETURNING id, title, body, created_at"
        let rows = try query(sql) { stmt in
            Store.bind(stmt, 1, title)
            Store.bind(stmt, 2, body)
        }
        guard let post = rows.first else { throw StoreError(description: "INSERT returned no row") }
        return post
    }

    /// Closes the connection; later calls fail.
    func close() {
        connection.withLock { db in
            sqlite3_close_v2(db)
            db = nil
        }
    }

    // MARK: - Statements

    /// Prepares `sql`, lets `bind` bind its parameters, and reads every row as a post.
    private func query(_ sql: String, bind: (OpaquePointer) -> Void) throws -> [Post] {
        try connection.withLock { db -> [Post] in
            guard let db = db else { throw StoreError(description: "the database \(path) is closed") }
            var statement: OpaquePointer?
            guard sqlite3_prepare_v2(db, sql, -1, &statement, nil) == SQLITE_OK, let stmt = statement else {
                throw StoreError(description: "\(path): \(String(cString: sqlite3_errmsg(db)))")
            }
            defer { sqlite3_finalize(stmt) }
            bind(stmt)
            var posts: [Post] = []
            while true {
                let rc = sqlite3_step(stmt)
                if rc == SQLITE_DONE { break }
                guard rc == SQLITE_ROW else {
                    throw StoreError(description: "\(path): \(String(cString: sqlite3_errmsg(db)))")
                }
                posts.append(Post(id: sqlite3_column_int64(stmt, 0), title: Store.text(stmt, 1),
                                  body: Store.text(stmt, 2), createdAt: Store.text(stmt, 3)))
            }
            return posts
        }
    }

    /// Binds a string by its UTF-8 bytes (so an embedded NUL does not cut it).
    private static func bind(_ stmt: OpaquePointer, _ index: Int32, _ value: String) {
        var value = value
        value.withUTF8 { utf8 in
            _ = utf8.withMemoryRebound(to: CChar.self) { chars in
                if let base = chars.baseAddress, chars.count > 0 {
                    sqlite3_bind_text(stmt, index, base, Int32(chars.count), transient)
                } else {
                    sqlite3_bind_text(stmt, index, "", 0, transient)
                }
            }
        }
    }

    /// Reads a text column.
    private static func text(_ stmt: OpaquePointer, _ column: Int32) -> String {
        guard let ptr = sqlite3_column_text(stmt, column) else { return "" }
        let count = Int(sqlite3_column_bytes(stmt, column))
        return String(decoding: UnsafeBufferPointer(start: ptr, count: count), as: UTF8.self)
    }
}
