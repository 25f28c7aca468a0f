"""The HTTP edge exact to RFC 9112 and RFC 9110 (issue 14): each test is a sentence of the
RFC that srv broke, sent as raw bytes to the real binary."""
import json
import socket

import pytest

from conftest import Conn, plugin


@pytest.fixture(scope="module")
def app(module_servers):
    return module_servers(["--app", plugin("conformance")])


def exchange(port, raw, timeout=10):
    """Sends raw bytes; returns (responses as (status, headers, body) list, closed?)."""
    c = Conn(port, timeout=timeout)
    c.send(raw)
    responses = []
    try:
        while True:
            r = c.read_response()
            responses.append(r)
            if len(responses) > 5:
                break
    except (EOFError, ConnectionResetError, socket.timeout):
        pass
    closed = c.is_closed(timeout=1)
    c.close()
    return responses, closed


def one(port, raw):
    responses, _ = exchange(port, raw)
    assert responses, "no response"
    return responses[0]


@pytest.mark.parametrize("value", ["close\t", "close \t", "Close", "keep-alive, close"])
def test_connection_close_is_read_after_trimming(app, value):
    """RFC 9112 9.6: a request with the close option ends the connection after its
    response; OWS (spaces and tabs) around the option is not part of it."""
    raw = (f"GET /environ HTTP/1.1\r\nHost: x\r\nConnection: {value}\r\n\r\n"
           "GET /environ?second HTTP/1.1\r\nHost: x\r\n\r\n")
    responses, closed = exchange(app.port, raw.encode())
    assert len(responses) == 1 and closed, responses


@pytest.mark.parametrize("host", ["a b", "a/b", "evil@good", "4714::abcd:8001", "h\u00e9llo", "x:80x", "[::1"])
def test_an_invalid_host_gets_400(app, host):
    """RFC 9112 3.2: a server MUST respond with 400 to a request with an invalid Host."""
    raw = b"GET /environ HTTP/1.1\r\nHost: " + host.encode("utf-8") + b"\r\nConnection: close\r\n\r\n"
    assert one(app.port, raw).status == 400


@pytest.mark.parametrize("host", ["example.com", "example.com:8080", "127.0.0.1", "[::1]:80", "xn--bcher-kva.example", ""])
def test_a_valid_host_is_served(app, host):
    raw = f"GET /environ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    assert one(app.port, raw).status == 200


def test_the_authority_of_an_absolute_form_target_wins_over_host(app):
    """RFC 9112 3.2.2: with an absolute-form target, the server uses its authority and
    ignores Host."""
    r = one(app.port, b"GET http://target.example:81/environ HTTP/1.1\r\nHost: header.example\r\nConnection: close\r\n\r\n")
    assert r.status == 200
    assert json.loads(r.body)["SERVER_NAME"] == "target.example"


@pytest.mark.parametrize("target", ["http://user@good.example/environ", "http://a b/environ", "http:///environ"])
def test_an_invalid_authority_in_the_target_gets_400(app, target):
    raw = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    assert one(app.port, raw).status == 400


def test_asterisk_form_is_only_for_options(app):
    """RFC 9112 3.2.4: the asterisk-form is only used for a server-wide OPTIONS."""
    assert one(app.port, b"GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").status == 400
    assert one(app.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").status != 400


def test_content_length_with_many_leading_zeros_is_its_number(app):
    raw = b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 000000000000000000000005\r\n\r\nhello"
    r = one(app.port, raw)
    assert r.status == 200 and r.body == b"hello", r


@pytest.mark.parametrize("field", ["Content-Length: 5", "Transfer-Encoding: chunked", "Host: evil.example",
                                   "Content-Type: text/html", "Authorization: Basic eA==", "If-Match: *"])
def test_fields_forbidden_in_trailers_are_refused(app, field):
    """RFC 9110 6.5.1: framing, routing, request modifiers and content metadata must not be
    sent in a trailer section."""
    raw = (f"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
           f"5\r\nhello\r\n0\r\n{field}\r\n\r\n").encode()
    assert one(app.port, raw).status == 400


def test_an_allowed_trailer_is_fine(app):
    raw = (b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n")
    r = one(app.port, raw)
    assert r.status == 200 and r.body == b"hello"


def test_http10_with_transfer_encoding_is_answered_then_closed(app):
    """RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 request means faulty framing: the
    server MUST close the connection after responding."""
    raw = (b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\n\r\n"
           b"GET /environ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    responses, closed = exchange(app.port, raw)
    assert len(responses) == 1 and closed, responses


def test_an_unknown_method_gets_501(app):
    """RFC 9110 9.1: a method the server does not recognize gets 501 (Not Implemented)."""
    assert one(app.port, b"FOO /environ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").status == 501
    assert one(app.port, b"G{T /environ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").status == 400


def test_a_higher_minor_of_http1_is_served_as_1_1(app):
    """RFC 9110 2.5: a recipient treats a higher minor version of a major it implements as
    the highest minor it implements."""
    r = one(app.port, b"GET /environ HTTP/1.2\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert r.status == 200
    assert json.loads(r.body)["SERVER_PROTOCOL"] == "HTTP/1.1"
    # Another major, well-formed, is a version srv does not support: 505 (RFC 9110 15.6.6).
    for version in [b"HTTP/3.0", b"HTTP/2.7"]:
        assert one(app.port, b"GET /environ " + version + b"\r\nHost: x\r\nConnection: close\r\n\r\n").status == 505


@pytest.mark.parametrize("field", ["Transfer-Encoding: chunked\t", "Transfer-Encoding: chunked \t "])
def test_a_trailing_tab_after_transfer_encoding_is_whitespace(app, field):
    raw = (f"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{field}\r\n\r\n"
           "5\r\nhello\r\n0\r\n\r\n").encode()
    r = one(app.port, raw)
    assert r.status == 200 and r.body == b"hello", r


def test_a_trailing_tab_after_content_length_is_whitespace(app):
    r = one(app.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\t\r\n\r\nhello")
    assert r.status == 200 and r.body == b"hello", r


def test_a_tab_inside_a_value_stays(app):
    r = one(app.port, b"GET /environ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-T: a\tb\t\r\n\r\n")
    assert ["X-T", "a\tb"] in json.loads(r.body)["headers"]


def test_a_tab_in_a_body_is_not_touched(app):
    body = b"a\t\r\nb\t"
    raw = b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 6\r\n\r\n" + body
    assert one(app.port, raw).body == body


def test_an_upgrade_request_whose_body_comes_later_is_answered(app):
    """srv speaks no other protocol, so it answers an Upgrade request as a plain one
    (RFC 9110 7.8 lets a server ignore Upgrade), body and all, even when the body arrives
    in a later read."""
    import time
    c = Conn(app.port, timeout=10)
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\nContent-Length: 5\r\n\r\n")
    time.sleep(0.3)
    c.send(b"hello")
    r = c.read_response()
    assert r.status == 200 and r.body == b"hello"
    c.close()


CHUNKED_ECHO = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("line", ["3;a=b", "3; a=b", "3;a =b", "3;a= b", "3 ; a = b", "3\t;\ta\t=\tb",
                                  '3; a = "x ; y = z"; b', "3;a;b=c ; c"])
def test_whitespace_around_chunk_extension_separators_is_allowed(app, line):
    """RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS
    chunk-ext-val ] ). The body is the chunks' data, and the connection goes on."""
    raw = CHUNKED_ECHO + f"{line}\r\nabc\r\n2 ; x = y\r\nde\r\n0\r\n\r\n".encode() + \
        b"GET /counter HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    responses, _ = exchange(app.port, raw)
    assert [r.status for r in responses] == [200, 200], responses
    assert responses[0].body == b"abcde", responses[0]


def test_a_chunk_line_split_across_reads_keeps_its_extension_whitespace_allowed(app):
    """The same line arriving in pieces (a client writing it byte by byte)."""
    import time
    c = Conn(app.port, timeout=10)
    c.send(CHUNKED_ECHO)
    for piece in [b"3", b" ", b"; a", b" =", b" b\r", b"\nabc\r\n", b"0;", b" z\r\n\r\n"]:
        time.sleep(0.05)
        c.send(piece)
    r = c.read_response()
    assert r.status == 200 and r.body == b"abc", r
    c.close()


@pytest.mark.parametrize("line", ["3;a b", "3;a=b c", "3; a b = c"])
def test_a_chunk_extension_that_is_not_one_is_still_refused(app, line):
    """Whitespace is allowed only around the separators: a name or value with a space in
    it is malformed (400)."""
    raw = CHUNKED_ECHO + f"{line}\r\nabc\r\n0\r\n\r\n".encode()
    assert one(app.port, raw).status == 400
