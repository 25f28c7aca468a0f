/// A post as submitted by the form or the API, before it is stored: the fields as the user
/// typed them (re-rendered on error) and the validation rules.
struct Draft {
    static let titleLimit = 200
    static let bodyLimit = 20_000

    var title: String
    var body: String

    /// The fields without surrounding whitespace, as they are stored.
    var trimmed: Draft { Draft(title: title.trimmed(), body: body.trimmed()) }

    /// Problems with the trimmed fields, by field name ("title", "body"); empty when valid.
    func validate() -> [String: String] {
        let t = trimmed
        var errors: [String: String] = [:]
        if let problem = Draft.check(t.title, name: "Title", limit: Draft.titleLimit) { errors["title"] = problem }
        if let problem = Draft.check(t.body, name: "Body", limit: Draft.bodyLimit) { errors["body"] = problem }
        return errors
    }

    private static func check(_ value: String, name: String, limit: Int) -> String? {
        let count = value.count
        if count == 0 { return "\(name) is required." }
        if count > limit { return "\(name) must be at most \(limit) characters (it has \(count))." }
        return nil
    }
}

extension String {
    /// Without leading and trailing whitespace and newlines.
    func trimmed() -> String {
        guard let first = firstIndex(where: { !$0.isWhitespace }),
              let last = lastIndex(where: { !$0.isWhitespace }) else { return "" }
        return String(self[first...last])
    }
}
