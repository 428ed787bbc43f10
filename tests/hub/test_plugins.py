"""Plugin loading: entry points, failures shown not fatal, name clashes, misspelt hooks."""

from __future__ import annotations

import pytest
from pluggy import PluginValidationError

from hub import hookimpl
from hub.errors import ConfigError
from hub.plugins import PluginHost


def broken_distribution(tmp_path) -> str:
    """A fake installed distribution whose entry point cannot be imported."""
    info = tmp_path / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[omnihub.plugins]\nbroken = omnihub_no_such_module_here\n")
    return str(tmp_path)


def test_built_in_and_third_party_adapters_load_through_entry_points():
    host = PluginHost()
    host.load_entry_points()
    rows = {(i.name, i.kind, i.distribution, i.status) for i in host.infos}
    assert ("app", "adapter", "omnihub", "ok") in rows
    assert ("echo", "adapter", "omnihub-echo-channel", "ok") in rows


def test_a_broken_plugin_is_listed_as_failed_and_the_rest_load(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(broken_distribution(tmp_path))
    host = PluginHost()
    host.load_entry_points()
    broken = [i for i in host.infos if i.name == "broken"][0]
    assert broken.status.startswith("failed: No module named 'omnihub_no_such_module_here'")
    assert "app" in host.adapters
    strict = PluginHost(strict=True)
    with pytest.raises(ModuleNotFoundError):
        strict.load_entry_points()


def test_allow_list_limits_what_loads():
    host = PluginHost(allow=("app",))
    host.load_entry_points()
    assert list(host.adapters) == ["app"]


def test_two_adapters_with_one_name_is_an_error():
    from adapters.app import AppAdapter

    class Impostor:
        @hookimpl
        def register_adapters(self, register):
            register(AppAdapter())

    host = PluginHost(allow=("app",))
    host.load_entry_points()
    with pytest.raises(ConfigError, match="two adapters are named 'app'"):
        host.register(Impostor(), "impostor")
    assert host.pm.get_plugin("impostor") is None


def test_a_misspelt_hook_is_refused():
    class Typo:
        @hookimpl
        def mesage_received(self, message):
            pass

    host = PluginHost(allow=())
    with pytest.raises(PluginValidationError):
        host.register(Typo(), "typo")
    assert host.pm.get_plugin("typo") is None
