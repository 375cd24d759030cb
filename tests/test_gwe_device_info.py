"""device_info as Exosite's own dashboard reads it: GWE-MrMurano-Example-App's ``modules/GWE.lua``
parses the JSON text positionally. Its three parsers are ported here line by line (Lua's 1-based
``string.find``/``string.sub``), and run on the very text gwe writes."""
from __future__ import annotations

import json
import re

from gwe.device_info import device_info


def find(s, pattern):
    """Lua string.find for the patterns GWE.lua uses: "%s", "%[", "%]" and plain text."""
    if pattern == "%s":
        m = re.search(r"[ \t\n\v\f\r]", s)
        return m.start() + 1 if m else None
    i = s.find({"%[": "[", "%]": "]"}.get(pattern, pattern))
    return i + 1 if i >= 0 else None


def sub(s, i, j=None):
    """Lua string.sub: 1-based, inclusive, 0 read as 1, j defaults to the end."""
    i = max(i, 1)
    return s[i - 1:] if j is None else s[i - 1:max(j, 0)]


def get_disk_usage(content):
    substr = content
    rows = []
    while find(substr, "uname") > find(substr, "/") and find(substr, "uname") is not None:
        row = {}
        rows.append(row)
        temp = find(substr, "\\n")
        substr = sub(substr, temp)
        temp = find(substr, "%s")
        row[0] = sub(substr, 3, temp)
        for column in (1, 2, 3, 4):
            substr = sub(substr, temp + 1)
            temp = find(substr, "%s")
            row[column] = sub(substr, 0, temp)
        substr = sub(substr, temp + 1)
        temp = find(substr, "\\n") - 1
        if temp > find(substr, "uname"):
            break
        row[5] = sub(substr, 0, temp)
    return rows


def get_uname(content):
    substr = sub(content, find(content, "uname") + 9)
    return sub(substr, 0, find(substr, '"') - 1)


def get_ip_address(content):
    substr = sub(content, find(content, "ipaddrs") + 9)
    substr = sub(substr, find(substr, "%[") + 1)
    return sub(substr, 2, find(substr, "%]") - 2)


def written(info):
    """What gwe writes to the device_info dataport."""
    from gwe import daemon

    source = open(daemon.__file__).read()
    assert '"device_info": json.dumps(device_info())' in source
    return json.dumps(info)


def test_original_keys_lead_in_the_original_order():
    info = device_info()
    assert list(info)[:5] == ["df", "uname", "ipaddrs", "free", "date"]


def test_exosites_positional_parser_reads_every_disk_and_nothing_else():
    info = device_info()
    content = written(info)
    rows = get_disk_usage(content)
    filesystems = [line.split()[0] for line in info["df"].splitlines()[1:]]
    assert [row[0].strip() for row in rows] == filesystems
    assert get_uname(content) == info["uname"]
    first_iface = next(iter(info["ipaddrs"].values()))
    assert get_ip_address(content) == '", "'.join(first_iface)


def test_sorted_keys_give_the_parser_junk_rows():
    """The oracle can fail: with sorted keys (what gwe wrote before) disks and free become rows."""
    info = device_info()
    rows = get_disk_usage(json.dumps(info, sort_keys=True))
    filesystems = [line.split()[0] for line in info["df"].splitlines()[1:]]
    assert [row[0].strip() for row in rows] != filesystems
