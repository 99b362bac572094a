"""The one table of numeric option ranges (``cli/validate.py`` RANGES) holds no stale entry: every name in it is an
option some command still has (``verify --random`` became ``--samples`` / ``--seed``; no command has ``--timeout``)."""

from __future__ import annotations


def _numeric_options() -> set:
    from dsr_deploy.cli import command
    from dsr_deploy.cli.validate import numeric_params

    return {p.opts[0] for _where, p, _ in numeric_params(command())}


def test_every_range_belongs_to_an_option_a_command_has():
    from dsr_deploy.cli.validate import RANGES

    stale = sorted(set(RANGES) - _numeric_options())
    assert stale == [], f"ranges for options no command has: {stale}"


def test_verify_takes_samples_and_seed_not_random():
    from dsr_deploy.cli.validate import RANGES

    found = _numeric_options()
    assert {"--samples", "--seed"} <= found and "--random" not in found and "--random" not in RANGES
