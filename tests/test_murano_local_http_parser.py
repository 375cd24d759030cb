"""murano_local's HTTP/1.1 request parser against h11 as the oracle, on valid, invalid and mutated inputs.

The rule: wherever h11 reads a request, ours reads the very same one (method, target, version,
fields, body, keep-alive) or refuses it for one of the documented stricter reasons; wherever
h11 refuses, ours refuses too. Never more lenient than h11.
"""
import random

import h11
import pytest

from murano_local.http_parser import (END_OF_MESSAGE, NEED_DATA, Data, ParseError, RequestHead, RequestParser)

# Refusals where h11 reads on, each a choice of ours documented in docs/murano_local.md.
STRICTER = ("HTTP/1.1 or HTTP/1.0 only",                 # h11 parses any HTTP/d.d
            "chunked bodies are not supported",           # h11 decodes chunked
            "obsolete line folding",                      # h11 unfolds; RFC 9112 5.2 allows refusing
            "control character in a header field",       # h11 keeps CTLs other than NUL; RFC 9110 5.5 allows refusing
            "more than one Host header field",            # RFC 9112 3.2: MUST refuse; h11 does not check
            "request target must be a path or an absolute URL")  # h11 does not check the target's form


def h11_requests(raw):
    """(requests, verdict) as h11 reads ``raw``: verdict is "ok", "incomplete" or "refused"."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    out, head, body = [], None, b""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return out, "refused"
        if event is h11.NEED_DATA:
            return out, "incomplete" if head is not None or conn.trailing_data[0] else "ok"
        if isinstance(event, h11.Request):
            head, body = event, b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            keep = conn.their_state is not h11.MUST_CLOSE
            fields = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in head.headers if n != b"content-length"]
            out.append((head.method.decode(), head.target.decode(), head.http_version.decode(), fields, body, keep))
            head = None
            if not keep:
                return out, "ok"
            conn.send(h11.Response(status_code=204, headers=[]))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
        else:
            return out, "ok"


def our_requests(raw, step=None):
    """(requests, verdict, error) as our parser reads ``raw``, fed whole or ``step`` bytes at a time."""
    parser = RequestParser()
    out, head, body = [], None, b""
    pieces = [raw] if step is None else [raw[i:i + step] for i in range(0, len(raw), step)]
    try:
        for piece in pieces:
            parser.receive(piece)
            while True:
                event = parser.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, RequestHead):
                    head, body = event, b""
                elif isinstance(event, Data):
                    body += event.data
                else:
                    assert event is END_OF_MESSAGE
                    fields = [f for f in head.headers.fields if f[0] != "content-length"]
                    out.append((head.method, head.target, head.version, fields, body, head.keep_alive))
                    head = None
    except ParseError as exc:
        assert 400 <= exc.status < 600 and exc.message
        return out, "refused", exc
    return out, "incomplete" if head is not None or parser.buffered else "ok", None


def compare(raw):
    """Assert the rule above for ``raw``; returns our verdict."""
    theirs, their_verdict = h11_requests(raw)
    ours, our_verdict, error = our_requests(raw)
    if theirs and theirs[-1][2] == "1.0" and not theirs[-1][5] and len(ours) >= len(theirs):
        # h11 keeps no HTTP/1.0 connection open: what follows a keep-alive one is beyond its view
        ours = ours[:len(theirs)]
        ours[-1] = ours[-1][:5] + (theirs[-1][5],)
        assert ours == theirs, raw
        return "ok"
    if our_verdict == "refused":
        if their_verdict == "refused":
            assert ours == theirs[:len(ours)]
            return "refused"
        if their_verdict == "incomplete" and h11_requests(raw + b"\r\n\r\n")[1] == "refused":
            return "refused"  # we judge a request line as soon as it is complete (an HTTP/0.9 client waits)
        assert error.message.startswith(STRICTER), (raw, error.message, theirs)
        assert ours == theirs[:len(ours)]
        return "refused"
    assert their_verdict != "refused", (raw, ours)
    assert ours == theirs, raw
    assert our_verdict == their_verdict, raw
    return our_verdict


GET = b"GET /onep:v1/stack/alias?a&b HTTP/1.1\r\nHost: x\r\nX-Exosite-CIK: t\r\n\r\n"
POST = (b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: aVendor.m2.exosite.com\r\nUser-Agent: Exosite-Async-C-lib/1.0\r\n"
        b"Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\nContent-Length: 24\r\n\r\n"
        b"temp=42&hum=30&lux=14000")
CASES = {
    "get": GET,
    "post": POST,
    "pipelined": POST + GET + POST,
    "http/1.0": b"GET /timestamp HTTP/1.0\r\n\r\n",
    "http/1.0 keep-alive": b"GET /timestamp HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "absolute-form": b"GET http://x:8080/timestamp?q HTTP/1.1\r\nHost: x:8080\r\n\r\n",
    "bare LF line ends": b"GET / HTTP/1.1\nHost: x\n\n",
    "OWS around a value": b"GET / HTTP/1.1\r\nHost:   x  \r\nX-Empty:\r\n\r\n",
    "obs-text value": b"GET / HTTP/1.1\r\nHost: x\r\nX-Name: caf\xe9\r\n\r\n",
    "repeated equal Content-Length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
    "listed equal Content-Length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\nab",
    "Connection list with close": b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n" + GET,
    "Connection close in capitals": b"GET / HTTP/1.1\r\nHost: x\r\nConnection: CLOSE\r\n\r\n",
    "Expect 100-continue": b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nz",
    "body arrives later": POST[:-5],
    "head arrives later": GET[:-2],
    # refused by both
    "conflicting Content-Length (smuggling)":
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 20\r\n\r\nxGET /timestamp HTTP/1.1\r\n\r\n",
    "conflicting listed Content-Length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\nab",
    "signed Content-Length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\nab",
    "hex Content-Length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x2\r\n\r\nab",
    "5,000-digit Content-Length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
    "NUL in a header name": b"GET / HTTP/1.1\r\nHost: x\r\nX-A\x00b: 1\r\n\r\n",
    "NUL in a header value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\x002\r\n\r\n",
    "stray CR in a value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r2\r\n\r\n",
    "space before the colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "field without a colon": b"GET / HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n",
    "HTTP/1.1 without Host": b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n",
    "empty line before the request line": b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "HTTP/0.9": b"GET /\r\n\r\n",
    "two spaces in the request line": b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
    "lower-case version": b"GET / http/1.1\r\nHost: x\r\n\r\n",
    "non-token method": b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "whitespace in the target": b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    "whitespace after the request line": b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",
    "unknown transfer coding": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    # refused by us only, for a documented reason
    "HTTP/2.0 line": b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    "chunked": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n",
    "chunked and Content-Length":
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n",
    "control character in a value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\x012\r\n\r\n",
    "two Host fields": b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "relative target": b"GET timestamp HTTP/1.1\r\nHost: x\r\n\r\n",
}
REFUSED = {name for name in CASES if list(CASES).index(name) >= list(CASES).index("conflicting Content-Length (smuggling)")}


@pytest.mark.parametrize("name", list(CASES))
def test_named_cases_agree_with_h11(name):
    verdict = compare(CASES[name])
    assert (verdict == "refused") == (name in REFUSED)


@pytest.mark.parametrize("name", list(CASES))
def test_byte_by_byte_feeding_reads_the_same(name):
    whole = our_requests(CASES[name])
    fed = our_requests(CASES[name], step=1)
    assert fed[:2] == whole[:2] or (whole[1] == "refused" and fed[1] == "refused")


def test_the_smuggled_request_is_never_read():
    ours, verdict, error = our_requests(CASES["conflicting Content-Length (smuggling)"])
    assert (ours, verdict, error.status) == ([], "refused", 400)


def test_statuses_of_refusals():
    def status(raw):
        return our_requests(raw)[2].status
    assert status(CASES["chunked"]) == 411
    assert status(CASES["unknown transfer coding"]) == 501
    assert status(CASES["HTTP/2.0 line"]) == 505
    assert status(CASES["5,000-digit Content-Length"]) == 413
    assert status(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n") == 431
    assert status(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000) == 431  # before the head ends
    assert status(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: 1\r\n" * 101 + b"\r\n") == 431
    assert status(b"GET /\r\n") == 400  # answered at once: an HTTP/0.9 client sends no more


def test_target_path_and_query():
    parser = RequestParser()
    parser.receive(b"GET http://h:1/onep:v1/stack/alias?a&b#frag HTTP/1.1\r\nHost: h\r\n\r\n"
                   b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n")
    first = parser.next_event()
    assert (first.path, first.query) == ("/onep:v1/stack/alias", "a&b")
    assert parser.next_event() is END_OF_MESSAGE
    second = parser.next_event()
    assert (second.path, second.query, second.keep_alive) == ("/p", "", True)


MUTATION_BYTES = [b"\x00", b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b",", b"\x7f", b"\x01", b"\x80", b"0", b"9", b"a"]


def mutate(rng, raw):
    i = rng.randrange(len(raw) + 1)
    kind = rng.randrange(5)
    if kind == 0:
        return raw[:i] + rng.choice(MUTATION_BYTES) + raw[i:]
    if kind == 1:
        return raw[:i] + raw[i + 1:]
    if kind == 2:
        return raw[:i] + rng.choice(MUTATION_BYTES) + raw[i + 1:]
    lines = raw.split(b"\r\n")
    j = rng.randrange(len(lines))
    if kind == 3:
        return b"\r\n".join(lines[:j] + [lines[j]] + lines[j:])  # a repeated line
    return b"\r\n".join(lines[:j] + [lines[j].swapcase()] + lines[j + 1:])


def test_mutated_requests_agree_with_h11():
    rng = random.Random(9112)
    seeds = [CASES[n] for n in CASES if n not in REFUSED]
    verdicts = {"ok": 0, "incomplete": 0, "refused": 0}
    for _ in range(4000):
        raw = rng.choice(seeds)
        for _ in range(rng.randrange(1, 3)):
            raw = mutate(rng, raw)
        verdicts[compare(raw)] += 1
    assert min(verdicts.values()) > 100  # the mutations reach every verdict
