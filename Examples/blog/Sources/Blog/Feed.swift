import SrvPlugin

/// `/feed.xml`: an Atom feed of the posts, streamed one entry per chunk with the SDK's
/// `.stream` body (srv pulls the next entry when the client has taken the previous one).
enum Feed {
    static func response(posts: [Post], request: Request) -> Response {
        let host = request.header("Host") ?? "\(request.serverName):\(request.serverPort)"
        let site = escapeHTML("\(request.scheme)://\(host)\(request.scriptName)")
        let head = """
            <?xml version="1.0" encoding="utf-8"?>
            <feed xmlns="http://www.w3.org/2005/Atom">
            <title>srv blog</title>
            <id>\(site)/</id>
            <link href="\(site)/"/>
            <link rel="self" href="\(site)/feed.xml"/>
            <updated>\(escapeHTML(posts.first?.createdAt ?? "1970-01-01T00:00:00Z"))</updated>
            <author><name>srv blog</name></author>

            """
        func entry(_ post: Post) -> String {
            """
            <entry>
            <title>\(escapeHTML(post.title))</title>
            <id>\(site)/posts/\(post.id)</id>
            <link href="\(site)/posts/\(post.id)"/>
            <updated>\(escapeHTML(post.createdAt))</updated>
            <content type="text">\(escapeHTML(post.body))</content>
            </entry>

            """
        }
        // The head, one chunk per post, the tail.
        var index = -1
        let chunks = AnyIterator<[UInt8]> {
            defer { index += 1 }
            switch index {
            case -1: return Array(head.utf8)
            case 0..<posts.count: return Array(entry(posts[index]).utf8)
            case posts.count: return Array("</feed>\n".utf8)
            default: return nil
            }
        }
        return Response(headers: [("Content-Type", "application/atom+xml; charset=utf-8")],
                        body: .stream(chunks))
    }
}
