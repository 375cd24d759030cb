"""The Device API contract (device_api): its rules, and gmq answering each exactly as murano_local does.

The second half sends the very same request to a real gmq and a real murano_local (both
subprocesses) for every rule of the contract module, and checks that gmq's status is
murano_local's, that what gmq refused is not queued, and that what gmq took (204) is
delivered to murano_local without a dead letter: a 204 means deliverable as well as durable.
"""
import time
from urllib.parse import quote

import pytest
import requests

import device_api
from device_api import (
    MAX_ALIAS_CHARS, MAX_FORM_FIELDS, MAX_READ_ALIASES, MAX_VALUE_BYTES, MAX_VALUES_PER_REQUEST, FormError, Invalid,
    TooLarge, check_alias, check_count, check_identity, check_value, decode_alias_query, decode_form, decode_record,
    decode_write, format_timestamp, timestamp_us,
)
from gmq_harness import GmqProcess
from harness import MuranoLocal, wait_for


# -- the rules, called directly ------------------------------------------------------------------
@pytest.mark.parametrize("raw,us", [("1554975272", 1554975272000000), ("1554975272.470659", 1554975272470659),
                                    ("1554975272470659", 1554975272470659), ("0", 0), ("1.7e9", 1700000000000000),
                                    (1554975272.470659, 1554975272470659), (1554975272470659, 1554975272470659)])
def test_timestamps_are_seconds_below_the_cut_off_and_microseconds_above(raw, us):
    assert timestamp_us(raw) == us


@pytest.mark.parametrize("raw", ["", "x", "-1", "inf", "nan", "1e30", "1_000", " 1 2", "1" * 33, "0x10",
                                 float("nan"), -1, True, "100000000000000000"])
def test_bad_timestamps_are_invalid(raw):
    with pytest.raises(Invalid) as err:
        timestamp_us(raw)
    assert err.value.status == 400


def test_format_timestamp_round_trips_to_the_microsecond():
    for ts in (0, 1700000000, 1554975272.470659, 1700000000.5):
        assert timestamp_us(format_timestamp(ts)) == round(ts * 1_000_000)
    with pytest.raises(ValueError):
        format_timestamp(-1)


@pytest.mark.parametrize("alias", ["temp.c", "a$b", "", "a\x00b", "tab\there", "del\x7f", "x" * (MAX_ALIAS_CHARS + 1),
                                   None, 5])
def test_aliases_murano_refuses(alias):
    with pytest.raises(Invalid):
        check_alias(alias)


@pytest.mark.parametrize("alias", ["temp", "a/b", "a+b#", "é", "x" * MAX_ALIAS_CHARS, "data_in"])
def test_aliases_murano_takes(alias):
    assert check_alias(alias) == alias


def test_values_are_bounded_in_utf8_bytes():
    assert check_value("x" * MAX_VALUE_BYTES)
    with pytest.raises(TooLarge) as err:
        check_value("é" * (MAX_VALUE_BYTES // 2 + 1))  # 2 bytes each
    assert err.value.status == 413


def test_identities():
    assert check_identity("gw 1/é") == "gw 1/é"
    for bad in ("", "a\nb", "x" * 257, None):
        with pytest.raises(Invalid):
            check_identity(bad)


def test_record_bodies():
    pairs = decode_form("alias=a&1=x&2=y&alias=b&1700000000123456=z")
    assert decode_record(pairs) == [("a", 1000000, "x"), ("a", 2000000, "y"), ("b", 1700000000123456, "z")]
    assert decode_record([("5", "v")], "t") == [("t", 5000000, "v")]
    for body, alias in (("1=x", None), ("", None), ("alias=a", None), ("alias=1", "t"), ("alias=a.b&1=x", None)):
        with pytest.raises(Invalid):
            decode_record(decode_form(body), alias)


def test_form_fields_and_values_are_bounded_before_they_are_all_in_memory():
    assert len(decode_form("&".join(["a=1"] * MAX_FORM_FIELDS))) == MAX_FORM_FIELDS
    for body in ("a=1&" * MAX_FORM_FIELDS, b"&" * MAX_FORM_FIELDS, "&" * 10 ** 6):
        with pytest.raises(TooLarge):
            decode_form(body)
    with pytest.raises(TooLarge):
        decode_alias_query("&".join("a%d" % i for i in range(MAX_READ_ALIASES + 1)))
    check_count([1] * MAX_VALUES_PER_REQUEST)
    with pytest.raises(TooLarge):
        decode_write([("a", "1")] * (MAX_VALUES_PER_REQUEST + 1))
    with pytest.raises(TooLarge):
        decode_record([("alias", "a")] + [(str(i), "v") for i in range(MAX_VALUES_PER_REQUEST + 1)])
    with pytest.raises(FormError):
        decode_form(b"a=\xff")


def test_the_contract_imports_nothing_of_the_suite():
    import ast
    import inspect

    for module in (device_api, device_api.contract):
        tree = ast.parse(inspect.getsource(module))
        imported = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not imported & {"device_client", "gmq", "murano_local", "gwe", "otau", "atomic_config"}


# -- the same request to gmq and to murano_local ----------------------------------------------------
YEAR_AHEAD = int(time.time()) + 365 * 86400
FORM = "application/x-www-form-urlencoded"
MIB = MAX_VALUE_BYTES

# (rule, path, body, content type, expected status[, (alias, µs) that must arrive]): the expectation is
# murano_local's; gmq must match it
CASES = [
    ("alias: '.'", "/onep:v1/stack/alias", "temp.c=21", FORM, 400),
    ("alias: '$'", "/onep:v1/stack/alias", "a%24b=1", FORM, 400),
    ("alias: control character", "/onep:v1/stack/alias", "a%01b=1", FORM, 400),
    ("alias: 300 characters", "/onep:v1/stack/alias", "%s=1" % ("a" * 300), FORM, 400),
    ("alias: 256 characters", "/onep:v1/stack/alias", "%s=1" % ("b" * 256), FORM, 204),
    ("alias: '/' is allowed", "/onep:v1/stack/alias/" + quote("c/d", safe=""), "1700000000=1", FORM, 204,
     ("c/d", 1700000000000000)),
    ("alias: in the path, '+' is a plus", "/onep:v1/stack/alias/e+f", "1700000000=1", FORM, 204,
     ("e+f", 1700000000000000)),
    ("alias: empty in a record", "/onep:v1/stack/record", "alias=&1700000000=1", FORM, 400),
    ("alias: not UTF-8 in the path", "/onep:v1/stack/alias/%ff", "1700000000=1", FORM, 400),
    ("alias: empty path segment", "/onep:v1/stack/alias/", "1700000000=1", FORM, 400),
    ("value: exactly the limit", "/onep:v1/stack/alias", "big=" + "v" * MIB, FORM, 204),
    ("value: one byte over", "/onep:v1/stack/alias", "big=" + "v" * (MIB + 1), FORM, 413),
    ("value: over in UTF-8 bytes", "/onep:v1/stack/record", "alias=u&1=" + quote("é" * (MIB // 2 + 1)), FORM, 413),
    ("value: raw JSON as murano-client sends it", "/onep:v1/stack/alias", 'data_in={"a": "b c"}', FORM, 204),
    ("timestamp: a year ahead", "/onep:v1/stack/alias/future", "%d=ahead" % YEAR_AHEAD, FORM, 204,
     ("future", YEAR_AHEAD * 1_000_000)),
    ("timestamp: microseconds", "/onep:v1/stack/record", "alias=us&1700000000123456=1", FORM, 204,
     ("us", 1700000000123456)),
    ("timestamp: seconds with a fraction", "/onep:v1/stack/alias/frac", "1700000000.25=1", FORM, 204,
     ("frac", 1700000000250000)),
    ("timestamp: not a number", "/onep:v1/stack/alias/t", "soon=1", FORM, 400),
    ("timestamp: negative", "/onep:v1/stack/alias/t", "-5=1", FORM, 400),
    ("timestamp: nan", "/onep:v1/stack/alias/t", "nan=1", FORM, 400),
    ("timestamp: past the range", "/onep:v1/stack/alias/t", "100000000000000000=1", FORM, 400),
    ("record: must start with alias=", "/onep:v1/stack/record", "1700000000=1", FORM, 400),
    ("record: nothing to record", "/onep:v1/stack/record", "alias=a", FORM, 400),
    ("record: alias= in a path record is a timestamp", "/onep:v1/stack/alias/t", "alias=x", FORM, 400),
    ("write: nothing to write", "/onep:v1/stack/alias", "", FORM, 400),
    ("form: field without '='", "/onep:v1/stack/alias", "novalue", FORM, 400),
    ("form: empty name", "/onep:v1/stack/alias", "=1", FORM, 400),
    ("form: bad percent-encoding", "/onep:v1/stack/alias", "%ff=1", FORM, 400),
    ("form: not UTF-8", "/onep:v1/stack/alias", b"a=\xff\xfe", FORM, 400),
    ("form: as many fields as allowed", "/onep:v1/stack/alias",
     "&".join("k%d=%d" % (i, i) for i in range(MAX_VALUES_PER_REQUEST)), FORM, 204),
    ("form: one value too many", "/onep:v1/stack/alias",
     "&".join("k%d=%d" % (i, i) for i in range(MAX_VALUES_PER_REQUEST + 1)), FORM, 413),
    ("form: as many record fields as allowed", "/onep:v1/stack/record",
     "&".join("alias=r%d&1700000000=%d" % (i, i) for i in range(MAX_VALUES_PER_REQUEST)), FORM, 204),
    ("form: too many fields, counted before decoding", "/onep:v1/stack/alias", "a=1" + "&" * MAX_FORM_FIELDS,
     FORM, 413),
    ("content type: text/plain", "/onep:v1/stack/alias", "ct=1", "text/plain", 415),
    ("content type: none", "/onep:v1/stack/alias", "ct=1", None, 204),
    ("activate: no id or sn", "/provision/activate", "vendor=p&model=p", FORM, 400),
    ("activate: identity with a control character", "/provision/activate", "id=a%0Ab", FORM, 400),
    ("activate: identity of 257 characters", "/provision/activate", "id=" + "i" * 257, FORM, 400),
    ("activate: id wins over sn", "/provision/activate", "id=act-1&sn=" + "i" * 300, FORM, 200),
]


class Pair:
    """A real murano_local and a real gmq forwarding to it, each with a device to post as."""

    def __init__(self, tmp_path, home):
        self.murano = MuranoLocal(str(tmp_path / "ml"), allow_self_register=True).start()
        self.token = requests.post(self.murano.url + "/provision/activate", data="id=direct", timeout=10).text
        self.gmq = GmqProcess(str(home), server={"max_body_bytes": 16 * MIB},
                              queue={"max_value_bytes": 2 * MIB},
                              upstream={"host": self.murano.url, "backoff_initial": 0.05, "backoff_max": 0.2})
        self.gmq.start()

    def send(self, target, path, body, ctype, serial=None):
        headers = {"Content-Type": ctype} if ctype else {}
        if target == "gmq":
            url, headers["X-Exosite-VMS"] = self.gmq.url, "p p %s" % serial
        else:
            url, headers["X-Exosite-CIK"] = self.murano.url, self.token
        if path == "/provision/activate":
            headers.pop("X-Exosite-VMS", None), headers.pop("X-Exosite-CIK", None)
        return requests.post(url + path, data=body, headers=headers, timeout=30)  # str data: no Content-Type added

    def pending(self, serial):
        """(queued, dead-lettered) values of the gmq client ``serial``."""
        return tuple(self.gmq.rows("SELECT count(*) FROM %s t JOIN clients c ON c.id = t.client WHERE c.serial = ?"
                                   % table, (serial,))[0][0] for table in ("queue", "dead_letter"))

    def close(self):
        self.gmq.stop()
        self.murano.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("contract")
    home = base / "home"
    home.mkdir()
    p = Pair(base, home)
    yield p
    p.close()


@pytest.mark.parametrize("rule,path,body,ctype,expected,arrives", [c if len(c) == 6 else c + (None,) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_gmq_answers_as_murano_local_does(pair, rule, path, body, ctype, expected, arrives):
    serial = "via-gmq-%d" % [c[0] for c in CASES].index(rule)  # a client per case: no case sees another's values
    direct = pair.send("murano", path, body, ctype)
    via_gmq = pair.send("gmq", path, body, ctype, serial)
    assert direct.status_code == expected, "murano_local: %s %s" % (direct.status_code, direct.text[:200])
    assert via_gmq.status_code == direct.status_code, "gmq: %s %s" % (via_gmq.status_code, via_gmq.text[:200])
    if via_gmq.status_code != 204:
        assert pair.pending(serial) == (0, 0)  # a refusal stores nothing
        return
    wait_for(lambda: pair.pending(serial)[0] == 0, 60, message="gmq delivered %s" % rule)
    assert pair.pending(serial) == (0, 0), rule  # delivered, not dead-lettered
    if arrives:  # and with the timestamp murano_local gave the same request sent directly
        alias, us = arrives
        assert [p["timestamp"] for p in pair.murano.history("direct", alias)] == [us]
        assert [p["timestamp"] for p in pair.murano.history(serial, alias)] == [us]
