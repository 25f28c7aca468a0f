#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SrvPlugin

/// The factory the C export (`SRV_SWIFT_APP(..., blog_app)` in BlogExport/export.c) calls.
@_cdecl("blog_app")
public func blogApp() -> UnsafeMutableRawPointer {
    export(BlogApp())
}

/// A small blog: HTML pages, a form, a JSON API and a stylesheet, over SQLite.
///
/// Settings (environment): BLOG_DATA_DIR, the directory of blog.db (default
/// $XDG_DATA_HOME/srv-blog, else ~/.local/share/srv-blog; created when missing);
/// BLOG_STATIC_DIR, a directory to serve /static/ from instead of the stylesheet compiled
/// into the plugin. Nothing depends on srv's working directory, so the .so works wherever
/// it is copied and whatever it is mounted at.
final class BlogApp: Application {
    /// Request bodies larger than this are refused with 413.
    static let maxBodySize = 64 * 1024

    private var store: Store?
    /// Where /static/ comes from when BLOG_STATIC_DIR is set; nil: the compiled-in stylesheet.
    private var staticDir: String?

    // MARK: - Lifecycle

    func load(_ server: ServerInfo) throws {
        guard let dataDir = BlogApp.environment("BLOG_DATA_DIR") ?? BlogApp.defaultDataDirectory() else {
            throw StoreError(description: "no place for the blog's data: set BLOG_DATA_DIR (or HOME)")
        }
        try BlogApp.makeDirectory(dataDir)
        store = try Store(path: dataDir + "/blog.db")
        staticDir = BlogApp.environment("BLOG_STATIC_DIR")
    }

    /// The XDG base directory for an application's data.
    private static func defaultDataDirectory() -> String? {
        if let xdg = environment("XDG_DATA_HOME"), xdg.hasPrefix("/") { return xdg + "/srv-blog" }
        return environment("HOME").map { $0 + "/.local/share/srv-blog" }
    }

    func unload() {
        store?.close()
        store = nil
    }

    // MARK: - Routing

    func handle(_ request: Request) throws -> Response {
        let parts = request.path.split(separator: "/").map(String.init)
        let api = parts.first == "api"
        if request.contentLength > BlogApp.maxBodySize {
            let message = "The request body is too large: \(request.contentLength) bytes, the limit is \(BlogApp.maxBodySize) bytes."
            return api ? try jsonError(413, message) : htmlError(413, message, request)
        }
        let method = request.method == "HEAD" ? "GET" : request.method

        let route = Route(parts)
        switch (method, route) {
        case ("GET", .index):
            return .html(Views.index(posts: try db().allPosts(), base: request.scriptName))
        case ("GET", .newPost):
            return .html(Views.form(Draft(title: "", body: ""), errors: [:], base: request.scriptName))
        case ("POST", .posts):
            return try createFromForm(request)
        case ("GET", .post(let id)):
            guard let id = BlogApp.postID(id), let post = try db().post(id: id) else {
                return htmlError(404, "There is no post at \(request.path).", request)
            }
            return .html(Views.show(post, base: request.scriptName))
        case ("GET", .feed):
            return Feed.response(posts: try db().allPosts(), request: request)
        case ("GET", .apiPosts):
            return try .json(try db().allPosts().map(PostJSON.init))
        case ("POST", .apiPosts):
            return try createFromJSON(request)
        case ("GET", .apiPost(let id)):
            guard let number = BlogApp.postID(id), let post = try db().post(id: number) else {
                return try jsonError(404, "No post with id \(id).")
            }
            return try .json(PostJSON(post))
        case ("GET", .asset(let name)):
            var response: Response
            if let dir = staticDir {
                guard BlogApp.isSafeFileName(name), access(dir + "/" + name, R_OK) == 0 else {
                    request.log("blog: \(request.path): no readable \(name) in BLOG_STATIC_DIR=\(dir)")
                    return htmlError(404, "There is nothing at \(request.path).", request)
                }
                response = Response.file(dir + "/" + name)
            } else {
                guard name == "style.css" else { return htmlError(404, "There is nothing at \(request.path).", request) }
                response = Response(headers: [("Content-Type", "text/css; charset=utf-8")], body: .bytes(PackageResources.style_css))
            }
            response.headers.append(("Cache-Control", "public, max-age=300"))
            return response
        case (_, .unknown):
            return api ? try jsonError(404, "No such resource: \(request.path).")
                       : htmlError(404, "There is nothing at \(request.path).", request)
        default:
            let message = "\(request.method) is not allowed here; use \(route.allowed)."
            var response = api ? try jsonError(405, message) : htmlError(405, message, request)
            response.headers.append(("Allow", route.allowed))
            return response
        }
    }

    /// What a path names.
    private enum Route {
        case index, newPost, posts, post(String), feed, apiPosts, apiPost(String), asset(String), unknown

        init(_ parts: [String]) {
            switch parts.count {
            case 0: self = .index
            case 1 where parts[0] == "posts": self = .posts
            case 1 where parts[0] == "feed.xml": self = .feed
            case 2 where parts[0] == "posts" && parts[1] == "new": self = .newPost
            case 2 where parts[0] == "posts": self = .post(parts[1])
            case 2 where parts[0] == "api" && parts[1] == "posts": self = .apiPosts
            case 3 where parts[0] == "api" && parts[1] == "posts": self = .apiPost(parts[2])
            case 2 where parts[0] == "static": self = .asset(parts[1])
            default: self = .unknown
            }
        }

        /// The methods the route answers, for 405's Allow.
        var allowed: String {
            switch self {
            case .posts: return "POST"
            case .apiPosts: return "GET, HEAD, POST"
            default: return "GET, HEAD"
            }
        }
    }

    // MARK: - Creating posts

    /// POST /posts: the form. 303 to the new post, or the form again with 422.
    private func createFromForm(_ request: Request) throws -> Response {
        guard request.mediaType == "application/x-www-form-urlencoded" else {
            return htmlError(415, "The form must be sent as application/x-www-form-urlencoded.", request)
        }
        let form = request.form
        let draft = Draft(title: form["title"] ?? "", body: form["body"] ?? "")
        let errors = draft.validate()
        guard errors.isEmpty else {
            return .html(Views.form(draft, errors: errors, base: request.scriptName), status: 422)
        }
        let clean = draft.trimmed
        let post = try db().create(title: clean.title, body: clean.body)
        return .redirect(to: "\(request.scriptName)/posts/\(post.id)")
    }

    /// POST /api/posts: JSON in, 201 with the post out.
    private func createFromJSON(_ request: Request) throws -> Response {
        let type = request.mediaType
        guard type == "application/json" || type.hasSuffix("+json") else {
            let got = request.contentType.isEmpty ? "none" : request.contentType
            return try jsonError(415, "Content-Type must be application/json (got \(got)).")
        }
        let draft: Draft
        do {
            draft = try Draft.fromJSON(request.body)
        } catch let bad as BadRequest {
            return try jsonError(400, bad.message)
        }
        let errors = draft.validate()
        guard errors.isEmpty else {
            return try .json(ErrorJSON(error: "The post is invalid.", fields: errors), status: 422)
        }
        let clean = draft.trimmed
        let post = try db().create(title: clean.title, body: clean.body)
        var response = try Response.json(PostJSON(post), status: 201)
        response.headers.append(("Location", "\(request.scriptName)/api/posts/\(post.id)"))
        return response
    }

    // MARK: - Errors

    private func htmlError(_ status: Int, _ message: String, _ request: Request) -> Response {
        .html(Views.error(status: status, message: message, base: request.scriptName), status: status)
    }

    private func jsonError(_ status: Int, _ message: String) throws -> Response {
        try .json(ErrorJSON(error: message), status: status)
    }

    // MARK: - Helpers

    private func db() throws -> Store {
        guard let store = store else { throw StoreError(description: "the blog database is not open") }
        return store
    }

    /// A positive decimal id, or nil.
    private static func postID(_ text: String) -> Int64? {
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let id = Int64(text), id > 0 else { return nil }
        return id
    }

    /// A plain file name: letters, digits, ".", "-", "_", not starting with ".".
    private static func isSafeFileName(_ name: String) -> Bool {
        guard let first = name.first, first != "." else { return false }
        return name.unicodeScalars.allSatisfy { c in
            (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9")
                || c == "." || c == "-" || c == "_"
        }
    }

    /// mkdir -p, with a message naming the directory when it fails.
    private static func makeDirectory(_ path: String) throws {
        var current = path.hasPrefix("/") ? "/" : ""
        for component in path.split(separator: "/") {
            if !current.isEmpty && !current.hasSuffix("/") { current += "/" }
            current += component
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
                let reason = String(cString: strerror(errno))
                let at = current == path ? "" : " (at \(current))"
                throw StoreError(description: "cannot create the blog data directory \(path)\(at): \(reason)")
            }
        }
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
            throw StoreError(description: "the blog data directory \(path) is not a directory")
        }
    }

    private static func environment(_ name: String) -> String? {
        guard let value = getenv(name), value.pointee != 0 else { return nil }
        return String(cString: value)
    }
}
