import SrvPlugin

/// The HTML pages. Every piece of text that comes from a user or the database goes
/// through `escapeHTML`; `base` is the request's SCRIPT_NAME, prefixed to every link so
/// the blog works wherever it is mounted.
enum Views {
    /// The page around `content`.
    static func layout(title: String, base: String, content: String) -> String {
        """
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>\(escapeHTML(title))</title>
        <link rel="stylesheet" href="\(escapeHTML(base))/static/style.css">
        <link rel="alternate" type="application/atom+xml" title="srv blog" href="\(escapeHTML(base))/feed.xml">
        </head>
        <body>
        <header class="site"><a class="brand" href="\(escapeHTML(base))/">srv blog</a>
        <a class="button" href="\(escapeHTML(base))/posts/new">New post</a></header>
        <main>
        \(content)
        </main>
        <footer class="site">Served by srv from a Swift plugin · <a href="\(escapeHTML(base))/feed.xml">Atom feed</a> · <a href="\(escapeHTML(base))/api/posts">JSON</a></footer>
        </body>
        </html>

        """
    }

    /// `/`: the posts, newest first, each with a short excerpt.
    static func index(posts: [Post], base: String) -> String {
        guard !posts.isEmpty else {
            return layout(title: "srv blog", base: base, content: """
                <p class="empty">No posts yet. <a href="\(escapeHTML(base))/posts/new">Write the first one.</a></p>
                """)
        }
        let items = posts.map { post in
            """
            <li><article>
            <h2><a href="\(escapeHTML(base))/posts/\(post.id)">\(escapeHTML(post.title))</a></h2>
            \(date(post.createdAt))
            <p>\(escapeHTML(excerpt(post.body)))</p>
            </article></li>
            """
        }
        return layout(title: "srv blog", base: base,
                      content: "<ul class=\"posts\">\n" + items.joined(separator: "\n") + "\n</ul>")
    }

    /// `/posts/ID`: one post, its paragraphs separated by blank lines.
    static func show(_ post: Post, base: String) -> String {
        layout(title: post.title, base: base, content: """
            <article class="post">
            <h1>\(escapeHTML(post.title))</h1>
            \(date(post.createdAt))
            \(paragraphs(post.body))
            </article>
            <p><a href="\(escapeHTML(base))/">← All posts</a></p>
            """)
    }

    /// `/posts/new`: the form, with the user's input and the problems found in it.
    static func form(_ draft: Draft, errors: [String: String], base: String) -> String {
        func problem(_ field: String) -> String {
            errors[field].map { "<p class=\"error\" id=\"\(field)-error\">\(escapeHTML($0))</p>" } ?? ""
        }
        func invalid(_ field: String) -> String {
            errors[field] == nil ? "" : " aria-invalid=\"true\" aria-describedby=\"\(field)-error\""
        }
        let summary = errors.isEmpty ? "" : "<p class=\"error summary\">Please fix the problems below.</p>\n"
        return layout(title: "New post", base: base, content: """
            <h1>New post</h1>
            \(summary)<form method="post" action="\(escapeHTML(base))/posts">
            <label for="title">Title</label>
            <input id="title" name="title" maxlength="\(Draft.titleLimit)" required value="\(escapeHTML(draft.title))"\(invalid("title"))>
            \(problem("title"))
            <label for="body">Body</label>
            <textarea id="body" name="body" rows="14" maxlength="\(Draft.bodyLimit)" required\(invalid("body"))>\(escapeHTML(draft.body))</textarea>
            \(problem("body"))
            <button type="submit">Publish</button>
            </form>
            """)
    }

    /// A page for an error status, with a message and a way back.
    static func error(status: Int, message: String, base: String) -> String {
        let title = "\(status) \(Response.reasonPhrase(for: status))"
        return layout(title: title, base: base, content: """
            <h1>\(escapeHTML(title))</h1>
            <p>\(escapeHTML(message))</p>
            <p><a href="\(escapeHTML(base))/">← All posts</a></p>
            """)
    }

    // MARK: - Pieces

    /// "2025-01-31T12:00:00Z" as a <time> showing "2025-01-31 12:00 UTC".
    private static func date(_ iso: String) -> String {
        var shown = iso
        if iso.count == 20, iso.hasSuffix("Z") {
            shown = String(iso.prefix(16)).replacing("T", with: " ") + " UTC"
        }
        return "<time datetime=\"\(escapeHTML(iso))\">\(escapeHTML(shown))</time>"
    }

    /// The first 200 characters of the body on one line.
    private static func excerpt(_ body: String) -> String {
        let line = body.split(whereSeparator: { $0.isNewline }).joined(separator: " ")
        return line.count > 200 ? String(line.prefix(200)) + "…" : line
    }

    /// Paragraphs at blank lines, line breaks within them.
    private static func paragraphs(_ body: String) -> String {
        let normalized = body.replacing("\r\n", with: "\n")
        var paragraphs: [String] = []
        var lines: [String] = []
        for line in normalized.split(separator: "\n", omittingEmptySubsequences: false) {
            if String(line).trimmed().isEmpty {
                if !lines.isEmpty { paragraphs.append(lines.joined(separator: "<br>\n")) }
                lines = []
            } else {
                lines.append(escapeHTML(String(line)))
            }
        }
        if !lines.isEmpty { paragraphs.append(lines.joined(separator: "<br>\n")) }
        return paragraphs.map { "<p>\($0)</p>" }.joined(separator: "\n")
    }
}
