"""The man pages name every option and command the two parsers know."""

import argparse
import pathlib

import pytest

from mqttbuffer import cli
from mqttbuffer.control import ctl

MAN = pathlib.Path(__file__).resolve().parents[2] / "man"


def words(parser):
    """Long options and subcommands of an argparse parser, recursively."""
    for action in parser._actions:
        yield from (o for o in action.option_strings if o.startswith("--") and o != "--help")
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name
                yield from words(sub)


def parser_of(module, argv, monkeypatch):
    """The parser ``module.parse_args`` builds (caught as it parses ``argv``)."""
    built = []
    original = argparse.ArgumentParser.parse_args

    def catch(self, *args, **kwargs):
        built.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    module.parse_args(argv)
    return built[0]


@pytest.mark.parametrize("page, module, argv", [("mqttbuffer.8", cli, []), ("mqttbufferctl.8", ctl, ["status"])])
def test_the_man_page_names_every_option_and_command(page, module, argv, monkeypatch):
    text = (MAN / page).read_text().replace("\\-", "-")
    missing = sorted({w for w in words(parser_of(module, argv, monkeypatch)) if w not in text})
    assert not missing, f"{page} does not mention {missing}"
