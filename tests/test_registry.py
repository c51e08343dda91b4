"""The provider registry: found by file name, imported only when named, unknown names diagnosed."""

from __future__ import annotations

import sys

import pytest

from crossfade.registry import ProviderConfigError, Registry


@pytest.fixture
def folder(tmp_path, monkeypatch):
    package = tmp_path / "myproviders"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_shared.py").write_text("")
    (package / "echo.py").write_text(
        "from crossfade.registry import ConfigProblem, ProviderConfigError\n"
        "def create(config, path):\n"
        "    if 'url' not in config:\n"
        "        raise ProviderConfigError([ConfigProblem(path + '.url', 'is required')])\n"
        "    return ('echo', config['url'])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield Registry("router", "myproviders")
    for name in [m for m in sys.modules if m.startswith("myproviders")]:
        del sys.modules[name]


def test_names_list_the_folder_without_importing_it(folder):
    assert folder.names() == ["echo"]
    assert "myproviders.echo" not in sys.modules


def test_create_builds_the_named_provider_from_its_config(folder):
    assert folder.create("echo", {"url": "http://x"}, "routers[0].echo") == ("echo", "http://x")


def test_a_provider_reports_its_own_problems_with_their_paths(folder):
    with pytest.raises(ProviderConfigError) as caught:
        folder.create("echo", {}, "routers[0].echo")
    assert str(caught.value) == "routers[0].echo.url: is required"


def test_an_unknown_name_says_what_is_known_and_the_likely_one(folder):
    with pytest.raises(ProviderConfigError) as caught:
        folder.create("ecko", {}, "routers[1]")
    assert str(caught.value) == "routers[1]: unknown router 'ecko' (did you mean 'echo'?); known: echo"
