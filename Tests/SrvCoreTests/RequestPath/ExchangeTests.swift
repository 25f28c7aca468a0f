import Glibc
import SrvGateway
import XCTest
@testable import SrvCore

/// The worker's request path against RFC 9112 and GATEWAY.md, in process: requests in,
/// bytes out, exactly as a client sees them. Each test states one promise.
final class ExchangeTests: XCTestCase {
    override func setUp() { TestApp.reset() }

    // MARK: - One request

    func testAGETIsAnsweredWithTheApplicationsStatusHeadersAndBody() throws {
        TestApp.handler = { $0.respond("201 Created", [("X-App", "yes")], body: "made\n") }
        let c = try connection()
        c.send("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        let r = try XCTUnwrap(c.responses().first)
        XCTAssertEqual(r.status, 201)
        XCTAssertEqual(r.reason, "Created")
        XCTAssertEqual(r.header("X-App"), "yes")
        XCTAssertEqual(r.header("Content-Length"), "5")
        XCTAssertNotNil(r.header("Date"), "RFC 9110 6.6.1: an origin server with a clock sends Date")
        XCTAssertEqual(r.body, "made\n")
        XCTAssertTrue(c.isOpen, "HTTP/1.1 is persistent by default")
        XCTAssertEqual(TestApp.closes, 1, "close is called exactly once")
    }

    func testEnvironCarriesMethodPathQueryAndProtocol() throws {
        var seen = ""
        TestApp.handler = { r in
            seen = "\(r.method) [\(r.scriptName)] [\(r.pathInfo)] [\(r.query)] \(r.serverProtocol) [\(r.contentLength)]"
            return r.respond(body: "")
        }
        let c = try connection(mount: "/app")
        c.send("GET /app/a%20b?x=1&y=%20 HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 200)
        XCTAssertEqual(seen, "GET [/app] [/a b] [x=1&y=%20] HTTP/1.1 []")
    }

    func testAPathNoApplicationIsMountedAtGets404WithoutCallingOne() throws {
        let c = try connection(mount: "/app")
        c.send("GET /application HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 404)
        XCTAssertEqual(TestApp.calls, 0)
        XCTAssertTrue(c.isOpen, "a 404 keeps the connection")
    }

    // MARK: - Pipelining (RFC 9112 9.3.2)

    func testPipelinedRequestsAreAnsweredInOrder() throws {
        TestApp.handler = { $0.respond(body: $0.pathInfo) }
        let c = try connection()
        c.send("GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\nGET /3 HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().map(\.body), ["/1", "/2", "/3"])
    }

    func testPipelinedRequestsBehindAStreamedResponseWaitForIt() throws {
        TestApp.handler = { r in
            r.startResponse()
            if r.pathInfo == "/stream" { r.setIterator(["a", "b", "c"]) } else { r.setBytes(Array(r.pathInfo.utf8)) }
            return SRV_OK
        }
        let c = try connection()
        c.send("GET /stream HTTP/1.1\r\nHost: h\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\n\r\n")
        let r = c.responses()
        XCTAssertEqual(r.map(\.body), ["abc", "/after"])
    }

    func testARequestSplitAtEveryByteBoundaryGetsTheSameAnswer() throws {
        TestApp.handler = { r in r.respond(body: "\(r.method) \(r.pathInfo) \(String(decoding: r.readBody(), as: UTF8.self))") }
        let request = Array("POST /p?q HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello".utf8)
        for split in 1..<request.count {
            let c = try connection()
            c.send(Array(request[..<split]))
            c.send(Array(request[split...]))
            XCTAssertEqual(c.responses().map(\.body), ["POST /p hello"], "split after byte \(split)")
        }
    }

    func testAChunkedRequestSplitAtEveryByteBoundaryGetsTheSameAnswer() throws {
        TestApp.handler = { r in r.respond(body: String(decoding: r.readBody(), as: UTF8.self)) }
        let request = Array("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n".utf8)
        for split in 1..<request.count {
            let c = try connection()
            c.send(Array(request[..<split]))
            c.send(Array(request[split...]))
            XCTAssertEqual(c.responses().map(\.body), ["abcde"], "split after byte \(split)")
        }
    }

    // MARK: - HEAD (RFC 9110 9.3.2, GATEWAY.md "HEAD")

    func testHEADGetsGETsHeadersAndNoBody() throws {
        TestApp.handler = { $0.respond(body: "twelve bytes") }
        let c = try connection()
        c.send("HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
        let bytes = c.output()
        XCTAssertTrue(bytes.hasPrefix("HTTP/1.1 200 OK\r\n"))
        XCTAssertTrue(bytes.contains("Content-Length: 12\r\n"))
        XCTAssertTrue(bytes.hasSuffix("\r\n\r\n"), "no body byte after the head: \(bytes)")
        XCTAssertEqual(TestApp.closes, 1)
    }

    func testHEADOfAStreamAnnouncesChunkedAndDoesNotPullTheIterator() throws {
        TestApp.handler = { r in r.startResponse(); r.setIterator(["x"]); return SRV_OK }
        let c = try connection()
        c.send("HEAD / HTTP/1.1\r\nHost: h\r\n\r\nHEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
        let r = c.responses(forHEAD: true)
        XCTAssertEqual(r.count, 2)
        XCTAssertEqual(r.first?.header("Transfer-Encoding"), "chunked")
        XCTAssertEqual(TestApp.pulls, 0)
        XCTAssertEqual(TestApp.closes, 2)
    }

    // MARK: - Bodies in (RFC 9112 6, 7)

    func testAChunkedUploadReachesTheAppDecoded() throws {
        var length = ""
        TestApp.handler = { r in
            let body = r.readBody()
            length = r.contentLength
            return r.respond(body: String(decoding: body, as: UTF8.self))
        }
        let c = try connection()
        c.send("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        XCTAssertEqual(c.responses().first?.body, "hello world")
        XCTAssertEqual(length, "11", "GATEWAY.md: CONTENT_LENGTH is the decoded length")
    }

    func testExpect100ContinueGetsAnInterimResponseBeforeTheBody() throws {
        TestApp.handler = { r in r.respond(body: String(decoding: r.readBody(), as: UTF8.self)) }
        let c = try connection()
        c.send("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        XCTAssertEqual(c.output(), "HTTP/1.1 100 Continue\r\n\r\n")
        XCTAssertEqual(TestApp.calls, 0)
        c.send("data")
        XCTAssertEqual(c.responses().first?.body, "data")
    }

    func testAnUnknownExpectationGets417() throws {
        let c = try connection()
        c.send("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: something\r\n\r\ndata")
        XCTAssertEqual(c.responses().first?.status, 417)
        XCTAssertEqual(TestApp.calls, 0)
    }

    // MARK: - Bodies out (GATEWAY.md "The response body")

    func testAnIteratorBodyIsChunkedOnHTTP11() throws {
        TestApp.handler = { r in r.startResponse(); r.setIterator(["one ", "", "two"]); return SRV_OK }
        let c = try connection()
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        let r = try XCTUnwrap(c.responses().first)
        XCTAssertTrue(r.chunked)
        XCTAssertEqual(r.body, "one two")
        XCTAssertTrue(c.isOpen)
        XCTAssertEqual(TestApp.closes, 1)
    }

    func testAnIteratorBodyOnHTTP10EndsWithTheConnection() throws {
        TestApp.handler = { r in r.startResponse(); r.setIterator(["one ", "two"]); return SRV_OK }
        let c = try connection()
        c.send("GET / HTTP/1.0\r\n\r\n")
        let bytes = c.output()
        XCTAssertFalse(bytes.contains("chunked"), "HTTP/1.0 has no chunked coding")
        XCTAssertTrue(bytes.hasSuffix("\r\n\r\none two"))
        XCTAssertFalse(c.isOpen)
    }

    func testAFileBodySendsTheRangeAsked() throws {
        TestApp.handler = { r in r.startResponse(); r.setFile(TestApp.openFile("0123456789"), offset: 2, length: 5); return SRV_OK }
        let c = try connection()
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        let r = try XCTUnwrap(c.responses().first)
        XCTAssertEqual(r.header("Content-Length"), "5")
        XCTAssertEqual(r.body, "23456")
        XCTAssertEqual(TestApp.closes, 1)
    }

    func testWriteSendsBodyBytesBeforeTheReturnedBody() throws {
        TestApp.handler = { r in
            let write = r.startResponse()!
            _ = write("first ", 6)
            r.setBytes(Array("then".utf8))
            return SRV_OK
        }
        let c = try connection()
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().first?.body, "first then")
    }

    func testAContentLengthThatDoesNotMatchTheBodyGives500BeforeTheCommit() throws {
        TestApp.handler = { $0.respond("200 OK", [("Content-Length", "3")], body: "four") }
        let c = try connection()
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 500)
        XCTAssertEqual(TestApp.closes, 1)
    }

    func testAnAppThatReturnsSRVErrorBeforeTheCommitGives500() throws {
        TestApp.handler = { r in r.startResponse(); return SRV_ERROR }
        let c = try connection()
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().map(\.status), [500, 500])
    }

    // MARK: - Refusals (RFC 9112 3, 5, 6; srv's limits)

    func testAMalformedRequestLineGets400AndTheConnectionCloses() throws {
        let c = try connection()
        c.send("GET /\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 400)
        XCTAssertFalse(c.isOpen)
        XCTAssertEqual(TestApp.calls, 0)
    }

    func testAnHTTP11RequestWithoutHostGets400() throws {
        let c = try connection()
        c.send("GET / HTTP/1.1\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 400)
        XCTAssertEqual(TestApp.calls, 0)
    }

    func testABodyOverTheLimitGets413() throws {
        let c = try connection { $0.limitRequestBody = 10 }
        c.send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 413)
        XCTAssertEqual(TestApp.calls, 0)
    }

    func testATargetOverTheLimitGets414() throws {
        let c = try connection { $0.limitRequestLine = 100 }
        c.send("GET /\(String(repeating: "a", count: 200)) HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 414)
        XCTAssertFalse(c.isOpen)
    }

    func testTooManyHeaderFieldsGet431() throws {
        let c = try connection { $0.limitRequestFields = 3 }
        c.send("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 431)
    }

    func testAnotherMajorVersionGets505() throws {
        let c = try connection()
        c.send("GET / HTTP/2.0\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 505)
    }

    // MARK: - Persistence (RFC 9112 9.3)

    func testHTTP10WithoutKeepAliveClosesAfterTheResponse() throws {
        let c = try connection()
        c.send("GET / HTTP/1.0\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 200)
        XCTAssertFalse(c.isOpen)
    }

    func testHTTP10WithKeepAliveStaysOpen() throws {
        let c = try connection()
        c.send("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        let r = try XCTUnwrap(c.responses().first)
        XCTAssertEqual(r.header("Connection")?.lowercased(), "keep-alive")
        XCTAssertTrue(c.isOpen)
    }

    func testConnectionCloseIsHonouredAndAnnounced() throws {
        let c = try connection()
        c.send("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        XCTAssertEqual(c.responses().first?.header("Connection"), "close")
        XCTAssertFalse(c.isOpen)
    }

    func testRequestsSentBeforeAHalfCloseAreAllAnswered() throws {
        let c = try connection()
        c.send("GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
        c.halfClose()
        XCTAssertEqual(c.responses().count, 2)
        XCTAssertFalse(c.isOpen)
    }

    func testAnIdleConnectionClosesAfterKeepAlive() throws {
        let c = try connection { $0.keepAlive = 5 }
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().count, 1)
        c.advance(seconds: 4.9)
        XCTAssertTrue(c.isOpen)
        c.advance(seconds: 0.2)
        XCTAssertFalse(c.isOpen)
    }

    func testAConnectionWhoseNextRequestWaitsUnreadIsNotIdle() throws {
        // The worker's loop was blocked longer than --keep-alive (a long inline request)
        // while this client's next request arrived: the timer fires before the read.
        let c = try connection { $0.keepAlive = 2 }
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().count, 1)
        c.socket.unread = 40
        c.advance(seconds: 2.5)
        XCTAssertTrue(c.isOpen, "closing a connection with unread input resets it")
        c.socket.unread = 0
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().count, 1)
        c.advance(seconds: 2.5)
        XCTAssertFalse(c.isOpen, "idle with nothing to read: closed after --keep-alive")
    }

    func testAStalledBodyWhoseBytesWaitUnreadGetsNo408() throws {
        TestApp.handler = { $0.respond(body: String(decoding: $0.readBody(), as: UTF8.self)) }
        let c = try connection { $0.bodyTimeout = 2 }
        c.send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nda")
        c.socket.unread = 2
        c.advance(seconds: 3)
        XCTAssertTrue(c.isOpen)
        c.socket.unread = 0
        c.send("ta")
        XCTAssertEqual(c.responses().first?.body, "data")
    }

    func testKeepAliveCountsFromTheLastResponse() throws {
        let c = try connection { $0.keepAlive = 5 }
        c.advance(seconds: 4)
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().count, 1)
        c.advance(seconds: 4)
        XCTAssertTrue(c.isOpen, "4 s after the response, 8 s after the connection opened")
        c.advance(seconds: 1.1)
        XCTAssertFalse(c.isOpen)
    }

    func testKeepAliveZeroMeansEveryResponseClosesItsConnection() throws {
        let c = try connection { $0.keepAlive = 0 }
        c.send("GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
        let r = c.responses()
        XCTAssertEqual(r.count, 1)
        XCTAssertEqual(r.first?.header("Connection"), "close")
        XCTAssertFalse(c.isOpen)
        XCTAssertEqual(TestApp.calls, 1)
    }

    func testKeepAliveZeroStillWaitsForTheFirstRequest() throws {
        let c = try connection { $0.keepAlive = 0; $0.bodyTimeout = 10 }
        c.advance(seconds: 5)
        XCTAssertTrue(c.isOpen, "a new connection's first request may take --body-timeout to arrive")
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 200)
        let d = try connection { $0.keepAlive = 0; $0.bodyTimeout = 10 }
        d.advance(seconds: 9.5)
        XCTAssertTrue(d.isOpen)
        d.advance(seconds: 1)
        XCTAssertFalse(d.isOpen)
    }

    func testKeepAliveZeroAGracefulStopClosesAConnectionStillWaitingForItsRequestWithin1s() throws {
        let c = try connection { $0.keepAlive = 0 }
        c.worker.shutdownGracefully(timeout: 30)
        c.loop.run()
        c.advance(seconds: 0.9)
        XCTAssertTrue(c.isOpen, "a request may be on its way")
        c.advance(seconds: 0.2)
        XCTAssertFalse(c.isOpen)
    }

    func testKeepAliveZeroClosesAfterSrvsOwnAnswersToo() throws {
        let c = try connection({ $0.keepAlive = 0 }, mount: "/app")
        c.send("GET /elsewhere HTTP/1.1\r\nHost: h\r\n\r\n")
        let r = c.responses()
        XCTAssertEqual(r.first?.status, 404)
        XCTAssertEqual(r.first?.header("Connection"), "close")
        XCTAssertFalse(c.isOpen)
    }

    // MARK: - Slow readers (--send-timeout, and idle means nothing left to send)

    func testASlowReaderKeepsItsConnectionWhileItTakesBytesAndKeepAliveStartsWhenItHasAll() throws {
        let c = try connection { $0.keepAlive = 2; $0.sendTimeout = 10 }
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().count, 1)
        c.socket.unsent = 100_000
        for _ in 0..<10 {  // 40 s, taking a little every 4 s
            c.advance(seconds: 4)
            c.socket.progress += 1
            XCTAssertTrue(c.isOpen, "a reader that keeps taking bytes is not idle")
        }
        c.socket.unsent = 0
        c.advance(seconds: 1.9)
        XCTAssertTrue(c.isOpen, "--keep-alive counts from when the client had everything")
        c.advance(seconds: 2.2)
        XCTAssertFalse(c.isOpen)
    }

    func testAReaderThatTakesNothingForSendTimeoutIsDropped() throws {
        let c = try connection { $0.keepAlive = 2; $0.sendTimeout = 10 }
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().count, 1)
        c.socket.unsent = 100_000
        c.advance(seconds: 9.9)
        XCTAssertTrue(c.isOpen, "not before --send-timeout")
        c.advance(seconds: 5.2)
        XCTAssertFalse(c.isOpen, "within 1.5 x --send-timeout")
    }

    func testAStalledRequestBodyGets408AfterBodyTimeout() throws {
        let c = try connection { $0.bodyTimeout = 10; $0.keepAlive = 2 }
        c.send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
        c.advance(seconds: 9)
        XCTAssertTrue(c.isOpen)
        c.advance(seconds: 1.5)
        XCTAssertEqual(c.responses().first?.status, 408)
        XCTAssertFalse(c.isOpen)
        XCTAssertEqual(TestApp.calls, 0)
    }

    // MARK: - Framing checks (RFC 9112 6.1, 6.3, 7; RFC 9110 6.5.1)

    func testContentLengthWithTransferEncodingGets400() throws {
        let c = try connection()
        c.send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 400)
        XCTAssertFalse(c.isOpen, "framing is unknown: the connection cannot be reused")
        XCTAssertEqual(TestApp.calls, 0)
    }

    func testATransferCodingOtherThanChunkedGets501() throws {
        let c = try connection()
        c.send("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 501)
        XCTAssertEqual(TestApp.calls, 0)
    }

    func testTwoHostHeadersGet400() throws {
        let c = try connection()
        c.send("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 400)
    }

    func testAnInvalidContentLengthGets400() throws {
        let c = try connection()
        c.send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1x\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 400)
        XCTAssertFalse(c.isOpen)
    }

    func testAFramingFieldInTheTrailerGets400() throws {
        let c = try connection()
        c.send("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nContent-Length: 5\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 400)
        XCTAssertEqual(TestApp.calls, 0)
    }

    func testAnUnknownMethodTokenGets501() throws {
        let c = try connection()
        c.send("BREW / HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 501)
    }

    func testTheAsteriskFormIsOnlyForOPTIONS() throws {
        TestApp.handler = { $0.respond(body: "[\($0.pathInfo)]") }
        let c = try connection()
        c.send("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 200)
        let d = try connection()
        d.send("GET * HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(d.responses().first?.status, 400)
    }

    func testTheBodyOfARequestNobodyServesIsSkippedAndTheNextRequestServed() throws {
        TestApp.handler = { $0.respond(body: "served \($0.pathInfo)") }
        let c = try connection(mount: "/app")
        c.send("POST /elsewhere HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\n\r\nabcdefgGET /app/y HTTP/1.1\r\nHost: h\r\n\r\n")
        let r = c.responses()
        XCTAssertEqual(r.map(\.status), [404, 200])
        XCTAssertEqual(r.last?.body, "served /y")
    }

    func testNothingAfterAConnectionCloseRequestReachesTheApp() throws {
        let c = try connection()
        c.send("GET /1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().count, 1)
        XCTAssertEqual(TestApp.calls, 1)
    }

    func testAnUpgradeRequestIsAnsweredAndTheConnectionThenCloses() throws {
        var upgrade: String?
        TestApp.handler = { r in upgrade = r.header("Upgrade"); return r.respond(body: "no") }
        let c = try connection()
        c.send("GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nrandom bytes of another protocol")
        let r = c.responses()
        XCTAssertEqual(r.map(\.status), [200])
        XCTAssertEqual(r.first?.header("Connection"), "close")
        XCTAssertEqual(upgrade, "websocket")
        XCTAssertFalse(c.isOpen)
        XCTAssertEqual(TestApp.calls, 1)
    }

    // MARK: - The application's side of the response (GATEWAY.md "start_response")

    func testAResponseWithoutContentLengthBuiltByWriteIsChunkedOnHTTP11() throws {
        TestApp.handler = { r in
            let write = r.startResponse()!
            _ = write("abc", 3)
            _ = write("", 0)
            _ = write("def", 3)
            return SRV_OK
        }
        let c = try connection()
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        let r = try XCTUnwrap(c.responses().first)
        XCTAssertTrue(r.chunked)
        XCTAssertEqual(r.body, "abcdef")
        XCTAssertTrue(c.isOpen)
    }

    func testHopByHopHeadersFromTheAppAreDroppedAndTheRestServed() throws {
        TestApp.handler = { $0.respond("200 OK", [("Connection", "close"), ("Keep-Alive", "timeout=99"), ("X-Kept", "1")], body: "ok") }
        let c = try connection()
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        let r = try XCTUnwrap(c.responses().first)
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.header("X-Kept"), "1")
        XCTAssertNil(r.header("Keep-Alive"))
        XCTAssertNil(r.header("Connection"))
        XCTAssertTrue(c.isOpen, "srv owns the connection: the app's Connection: close is not obeyed")
    }

    func testAHeaderValueWithCRLFBreaksARuleAndGives500() throws {
        TestApp.handler = { $0.respond("200 OK", [("X-Bad", "a\r\nSet-Cookie: x=1")], body: "ok") }
        let c = try connection()
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        let r = try XCTUnwrap(c.responses().first)
        XCTAssertEqual(r.status, 500)
        XCTAssertNil(r.header("Set-Cookie"))
    }

    func testStartResponseCalledTwiceGives500() throws {
        TestApp.handler = { r in r.startResponse(); return r.respond(body: "again") }
        let c = try connection()
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().first?.status, 500)
        XCTAssertEqual(TestApp.closes, 1)
    }

    func testAnEmptyReasonPhraseIsSentWithItsSpace() throws {
        TestApp.handler = { $0.respond("204 ", body: "") }
        let c = try connection()
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertTrue(c.output().hasPrefix("HTTP/1.1 204 \r\n"))
    }

    func testAnIteratorErrorAfterTheCommitAbortsTheConnection() throws {
        TestApp.handler = { r in
            r.startResponse()
            r.setIterator(["part", "never"])
            Unmanaged<TestApp.IteratorState>.fromOpaque(r.body.pointee.ctx!).takeUnretainedValue().failAt = 1
            return SRV_OK
        }
        let c = try connection()
        c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        let bytes = c.output()
        XCTAssertTrue(bytes.hasPrefix("HTTP/1.1 200 OK\r\n"))
        XCTAssertFalse(bytes.hasSuffix("0\r\n\r\n"), "the chunked body must not look complete")
        XCTAssertFalse(c.isOpen)
        XCTAssertEqual(TestApp.closes, 1)
    }

    // MARK: - Stopping

    func testAGracefulStopAnswersTheNextRequestWithConnectionClose() throws {
        let c = try connection()
        c.send("GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertNil(c.responses().first?.header("Connection"))
        c.worker.shutdownGracefully(timeout: 30)
        c.loop.run()
        XCTAssertTrue(c.isOpen, "an idle connection may have a request on its way")
        c.send("GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
        XCTAssertEqual(c.responses().first?.header("Connection"), "close")
        XCTAssertFalse(c.isOpen)
    }
}
