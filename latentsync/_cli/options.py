"""Command-line options generated from a settings table, and the options every working command shares.

Each field of a settings dataclass (`latentsync.pipeline.settings.LipSyncSettings`) becomes one option: its flag,
help group, parser and bounds come from the field's `SettingSpec`, and its help ends with the allowed values and
the default. A new setting is a new field in the table; no command declares it by hand::

    groups = option_groups(parser, "generation", "faces")
    add_setting_options(groups, LipSyncSettings)        # --steps, --guidance, --face-index, ...
    settings = settings_from_options(args, LipSyncSettings)
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from fractions import Fraction

from ..errors import ConfigError
from ..pipeline.settings import AUTO, SettingSpec, setting_specs


def option_groups(parser: argparse.ArgumentParser, *titles: str) -> dict[str, argparse._ArgumentGroup]:
    """``{title: group}``: argument groups of ``parser``, in the order ``--help`` lists them."""
    return {title: parser.add_argument_group(title) for title in titles}


def describe_default(spec: SettingSpec, default) -> str:
    """``"<help> (<allowed values>; default <default>)"``: the help of one generated option."""
    shown = spec.none_word if default is None else ("on" if default is True else "off" if default is False else default)
    if spec.kind is bool or (spec.choices is not None and spec.minimum is None):  # the metavar lists the values
        return f"{spec.help} (default {shown})"
    return f"{spec.help} ({spec.describe_values()}; default {shown})"


def _argument_type(name: str, spec: SettingSpec):
    """An argparse ``type`` that parses and checks one setting (errors read "argument --guidance: the value ...")."""

    def parse(text: str):
        try:
            return spec.parse("the value", text)
        except ConfigError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = name  # argparse names the type in its "invalid <name> value" message
    return parse


def _metavar(spec: SettingSpec) -> str | None:
    if spec.kind is str and spec.choices is not None:
        return "{" + ",".join(map(str, spec.choices)) + "}"
    if spec.choices is not None or spec.optional:
        words = [*([spec.none_word] if spec.optional else []), *map(str, spec.choices or ())]
        if spec.minimum is not None or spec.kind is Fraction:
            words.append("N")
        return "{" + ",".join(words) + "}"
    return "N" if spec.kind in (int, float) else None


def add_setting_options(groups: Mapping[str, argparse._ActionsContainer], settings_class) -> None:
    """One option per field of ``settings_class``, in the group its spec names (a key of ``groups``); the option's
    value is stored under the field's name."""
    for item in dataclasses.fields(settings_class):
        spec: SettingSpec = item.metadata["spec"]
        group = groups[spec.group]
        help = describe_default(spec, item.default)
        if spec.kind is bool:
            group.add_argument(
                spec.option(item.name), dest=item.name, action=argparse.BooleanOptionalAction, default=item.default,
                help=help,
            )  # fmt: skip
        else:
            group.add_argument(
                spec.option(item.name), dest=item.name, type=_argument_type(item.name, spec), default=item.default,
                metavar=_metavar(spec), help=help,
            )  # fmt: skip


def settings_from_options(args: argparse.Namespace, settings_class, **changes):
    """The ``settings_class`` instance the parsed options ask for (``changes`` on top)."""
    values = {name: getattr(args, name) for name in setting_specs(settings_class)}
    return settings_class(**{**values, **changes})


# ----------------------------------------------------------------------------------------------------------
# Threads


def add_threads_option(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--threads",
        type=_threads,
        default=AUTO,
        metavar="{auto,N}",
        help="torch CPU threads (default auto: torch's choice, one per physical core). On a machine busy with "
        "other work use fewer: two threads on a loaded 2-core box ran up to 20x slower than one "
        "(docs/benchmarks.md)",
    )


def _threads(text: str):
    if text == AUTO:
        return text
    try:
        threads = int(text)
    except ValueError:
        threads = 0
    if threads < 1:
        raise argparse.ArgumentTypeError(f"use auto or a number of threads >= 1, got {text!r}")
    return threads


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU thread count from ``--threads`` (``auto`` leaves torch's default)."""
    if args.threads != AUTO:
        import torch

        torch.set_num_threads(args.threads)
