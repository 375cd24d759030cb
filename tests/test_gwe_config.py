import os
import stat

import pytest

from gwe.config import (ConfigError, load_engine_settings, load_gateway_config, resolve_serial,
                        update_engine_settings, update_gateway_config)


def test_gateway_cfg_is_private_and_writes_empty_as_quotes(gwe_home):
    cfg = update_gateway_config({"vendor": "p1", "model": "p1"})
    path = gwe_home / "etc" / "gwe" / "Gateway.cfg"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert "[device]" in text and "cik = ''" in text and "vendor = p1" in text
    assert cfg.cik == "" and cfg.product_id == "p1"
    assert cfg.murano_url == "https://p1.m2.exosite.io"


def test_host_overrides_murano_url(gwe_home):
    assert update_gateway_config({"host": "http://127.0.0.1:9/"}).murano_url == "http://127.0.0.1:9"


def test_no_product_id_is_a_clear_error(gwe_home):
    with pytest.raises(ConfigError, match="set-product-id"):
        _ = load_gateway_config().murano_url


def test_serial_from_uuid_else_iface_mac_written_back(gwe_home):
    update_gateway_config({"iface": "lo"})
    assert resolve_serial() == "00:00:00:00:00:00"
    assert load_gateway_config().uuid == "00:00:00:00:00:00"
    update_gateway_config({"uuid": "SER-1"})
    assert resolve_serial() == "SER-1"


def test_no_serial_source_is_an_error(gwe_home):
    update_gateway_config({})
    with pytest.raises(ConfigError, match="set-uuid"):
        resolve_serial()
    update_gateway_config({"iface": "nosuchif0"})
    with pytest.raises(ConfigError, match="nosuchif0"):
        resolve_serial()
    assert load_gateway_config().uuid == ""


def test_engine_settings_defaults_and_validation(gwe_home):
    assert load_engine_settings()["update_interval"] == "14400"
    assert update_engine_settings({"update_interval": "30", "debug_level": "debug"})["debug_level"] == "DEBUG"
    for bad in ({"update_interval": "0"}, {"update_interval": "soon"}, {"debug_level": "LOUD"}, {"nope": "1"}):
        with pytest.raises(ConfigError):
            update_engine_settings(bad)
    assert load_engine_settings()["update_interval"] == "30"


def test_engine_fetch_puts_gwe_last_and_rejects_paths():
    from gwe.engine_fetch import FetchRequestError, parse_engine_fetch

    jobs = parse_engine_fetch('{"install": [{"name": "gwe.v2.tar.gz"}, {"name": "gmq.v2.tar.gz"},'
                              ' {"name": "app.v1.tar.gz", "sha256": "%s"}]}' % ("A" * 64))
    assert [j.name for j in jobs] == ["gmq.v2.tar.gz", "app.v1.tar.gz", "gwe.v2.tar.gz"]
    assert jobs[1].sha256 == "a" * 64
    for bad in ('[]', '{"install": []}', '{"install": [{"name": "../x.v1.tar.gz"}]}', 'not json',
                '{"install": [{"name": "a.v1.tar.gz", "sha256": "zz"}]}', '{"install": [{"nam": 1}]}'):
        with pytest.raises(FetchRequestError):
            parse_engine_fetch(bad)


def test_config_echoes_mask_the_token_and_only_gwe_c_prints_it(gwe_home):
    """Every gwe --set-* echoes Gateway.cfg: once activated that held the token, on screen and in logs."""
    import json
    import subprocess
    import sys

    token = "DzpquZ" + "a1" * 17

    def gwe(*args):
        result = subprocess.run([sys.executable, "-m", "gwe", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    for args in (["--set-cik", token], ["--set-uuid", "gw-1"], ["-P", "p1"], ["--set-host", "http://127.0.0.1:1"],
                 ["-g"], ["-u", "gw-1", "-t", "60"]):
        shown = gwe(*args)
        assert token not in shown and "cik = ********\n" in shown, (args, shown)
        shown = gwe(*args, "--json")
        assert token not in shown, (args, shown)
        assert json.loads(shown.splitlines()[-1])["device"]["cik"] == "********"
    assert gwe("-C") == token + "\n"
    assert json.loads(gwe("-C", "--json")) == {"cik": token}
    assert "cik = %s\n" % token in (gwe_home / "etc" / "gwe" / "Gateway.cfg").read_text()  # stored as it was
    update_gateway_config({"cik": ""})
    assert "cik = ''\n" in gwe("-g") and json.loads(gwe("-g", "--json"))["device"]["cik"] == ""
