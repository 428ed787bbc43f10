"""Configuration: TOML accounts, env references, and start-up errors naming what to fix."""

from __future__ import annotations

import pytest

from hub.config import load_settings
from hub.errors import ConfigError
from hub.plugins import PluginHost
from hub.runtime import build_accounts


def write(tmp_path, text: str):
    path = tmp_path / "omnihub.toml"
    path.write_text(text, encoding="utf-8")
    return path


def app_plugins() -> PluginHost:
    host = PluginHost(allow=("app",))
    host.load_entry_points()
    return host


def test_accounts_with_env_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILE_SECRET", "s" * 20)
    monkeypatch.setenv("OMNIHUB_REOPEN_DAYS", "3")
    path = write(tmp_path, """
[hub]
reopen_days = 9
database = "shop"

[[accounts]]
adapter = "app"
name = "mobile"
secret = "env:MOBILE_SECRET"
callback_url = "https://backend.example.com/omnihub"
window_s = 120
""")
    settings = load_settings(path)
    assert settings.reopen_days == 3.0  # the environment wins over the file
    assert settings.database == "shop"
    accounts = build_accounts(settings.accounts, app_plugins())
    account = accounts[("app", "mobile")]
    assert account.settings.secret == "s" * 20 and account.settings.window_s == 120
    assert "s" * 20 not in repr(account)


@pytest.mark.parametrize("table, message", [
    ('adapter = "app"\nname = "m"\n', "account 'm': setting 'secret' is required"),
    ('adapter = "app"\nname = "m"\nsecret = "short"\n', "at least 16 characters"),
    ('adapter = "app"\nname = "m"\nsecret = "env:NOT_SET_ANYWHERE"\n',
     "environment variable NOT_SET_ANYWHERE is not set"),
    ('adapter = "app"\nname = "m"\nsecret = "0123456789abcdef"\nwindow_s = -1\n',
     "account 'm': setting 'window_s'"),
    ('adapter = "app"\nname = "m"\nsecret = "0123456789abcdef"\ncallback_url = "ftp://x"\n',
     "account 'm': setting 'callback_url'"),
    ('adapter = "app"\nname = "m"\nsecret = "0123456789abcdef"\ncolour = "red"\n',
     "unknown setting 'colour'"),
    ('adapter = "fax"\nname = "m"\n', "account 'm': unknown adapter 'fax' (installed: app)"),
    ('name = "m"\n', "field 'adapter' is required"),
])
def test_invalid_accounts_name_account_and_field(tmp_path, table, message):
    path = write(tmp_path, "[[accounts]]\n" + table)
    with pytest.raises(ConfigError) as err:
        build_accounts(load_settings(path).accounts, app_plugins())
    assert message in str(err.value)


def test_bad_files_and_settings(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[[accounts]\n"))
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_settings(write(tmp_path, "[hub]\ncolour = 1\n"))
    with pytest.raises(ConfigError, match="configured twice"):
        load_settings(write(tmp_path, '[[accounts]]\nadapter="app"\nname="a"\n'
                                      '[[accounts]]\nadapter="app"\nname="a"\n'))
    monkeypatch.setenv("OMNIHUB_MAX_BODY_BYTES", "lots")
    with pytest.raises(ConfigError, match="OMNIHUB_MAX_BODY_BYTES"):
        load_settings(write(tmp_path, ""))
