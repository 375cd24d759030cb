import random

import pytest

from device_client import Backoff, FormError, decode_alias_query, decode_form, decode_form_dict, encode_form


def test_form_round_trip_of_awkward_values():
    values = {"a": "x y&z=1", "json": '{"k": [1, 2], "s": "é+%"}', "empty": ""}
    assert decode_form_dict(encode_form(values)) == values


def test_raw_values_as_murano_client_sends_them():
    assert decode_form('data_in={"some": "json data"}') == [("data_in", '{"some": "json data"}')]
    assert decode_form('d={"a":"b&c"}&z=1') == [("d", '{"a":"b&c"}'), ("z", "1")]


def test_record_body_keeps_order_and_duplicates():
    body = "alias=a&1=x&2=y&alias=b&3=z"
    assert decode_form(body) == [("alias", "a"), ("1", "x"), ("2", "y"), ("alias", "b"), ("3", "z")]


@pytest.mark.parametrize("body", [b"\xff\xfe=1", "=value", "novalue", "a=%ff"])
def test_garbage_forms_raise(body):
    with pytest.raises(FormError):
        decode_form(body)


def test_alias_query():
    assert decode_alias_query("a&b&a&c%20d&") == ["a", "b", "c d"]


def test_backoff_doubles_within_bounds_and_resets():
    b = Backoff(initial=1, maximum=8, jitter=0.5, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(6)]
    ceilings = [1, 2, 4, 8, 8, 8]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings))
    b.reset()
    assert b.next_delay() <= 1


def test_backoff_stays_at_its_maximum_however_long_the_outage():
    backoff = Backoff(initial=1, maximum=300)
    delays = [backoff.next_delay() for _ in range(5000)]  # 2.0 ** 1024 overflowed: ~3 days offline
    assert all(0 < d <= 300 for d in delays) and max(delays[-100:]) > 150
    backoff.reset()
    assert backoff.next_delay() <= 1
