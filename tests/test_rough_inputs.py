"""Inputs that used to end in "unexpected … (a bug)" (issue 22 item 12): a wheel name with a
5,000-digit label or version part, and an ``exclude_newer`` time that leaves years 1..9999 once
moved to UTC. Each now gives a result or one line naming the input; plus a hypothesis sweep of
digit runs in every numeric slot of a wheel name and of offset times at the calendar's edges."""

from __future__ import annotations

import datetime as dt

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from torchdepot.cli import main
from torchdepot.errors import ParseError, SpecError
from torchdepot.model.wheelname import parse_wheel
from torchdepot.spec.mirror import format_utc, parse_spec

HUGE = "1" * 5000  # past CPython's 4,300-digit int() limit

# Every place a wheel name carries digits that the model turns into numbers.
SHAPES = [
    "torch-2.0-cp310-cp310-linux_x86_64-cuda1.{d}.whl",
    "torch-2.0-cp310-cp310-linux_x86_64-cuda{d}.8.whl",
    "torch-2.0-cp310-cp310-linux_x86_64-rocm6.{d}.whl",
    "torch-2.0+cu.12.{d}-cp310-cp310-linux_x86_64.whl",
    "torch-2.0+rocm6.{d}-cp310-cp310-linux_x86_64.whl",
    "torch-2.0+cu{d}-cp310-cp310-linux_x86_64.whl",
    "rocm6.{d}/torch-2.0-cp310-cp310-linux_x86_64.whl",
    "cu{d}/torch-2.0-cp310-cp310-linux_x86_64.whl",
    "torch-2.{d}-cp310-cp310-linux_x86_64.whl",
    "torch-2.0-{d}-cp310-cp310-linux_x86_64.whl",
    "torch-2.0-cp310-cp310-manylinux_2_{d}_x86_64.whl",
    "torch-2.0-cp310-cp310-musllinux_{d}_2_x86_64.whl",
    "torch-2.0-cp310-cp310-macosx_{d}_0_arm64.whl",
]


@pytest.mark.parametrize("shape", SHAPES)
def test_a_5000_digit_number_anywhere_in_a_wheel_name_parses_or_is_one_parse_error(shape):
    name = shape.format(d=HUGE)
    try:
        w = parse_wheel(name)
    except ParseError as exc:
        message = str(exc)
        w = None
    if w is None:
        assert "\n" not in message
        return
    # A number that long names no accelerator and no glibc floor.
    assert w.accelerator is None or w.accelerator.name in ("cpu",)
    assert w.platform.glibc is None or max(w.platform.glibc) < 10_000


def test_parse_command_on_a_5000_digit_label_is_one_line_not_a_bug():
    result = CliRunner().invoke(main, ["parse", SHAPES[0].format(d=HUGE)])
    assert "a bug" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.output.count("\n") == 1


@given(st.sampled_from(SHAPES), st.text("0123456789", min_size=1, max_size=6000))
def test_any_digit_run_in_any_numeric_slot(shape, digits):
    message = ""
    try:
        parse_wheel(shape.format(d=digits))
    except ParseError as exc:
        message = str(exc)
    assert "\n" not in message


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_exclude_newer_out_of_range_in_utc_is_one_spec_error_naming_it(text):
    with pytest.raises(SpecError) as info:
        parse_spec({"exclude_newer": text}, "mirror.yaml")
    assert text in str(info.value)
    assert "\n" not in str(info.value)
    # YAML turns an unquoted time into a datetime before the spec sees it: same answer.
    with pytest.raises(SpecError, match="out of range"):
        parse_spec({"exclude_newer": dt.datetime.fromisoformat(text)}, "mirror.yaml")


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_exclude_newer_out_of_range_on_the_command_line_and_in_a_spec_file(tmp_path, text):
    runner = CliRunner()
    cli = runner.invoke(main, ["mirror", "--dry-run", "--out", str(tmp_path / "o"), "--exclude-newer", text])
    spec = tmp_path / "mirror.yaml"
    spec.write_text(f"exclude_newer: {text}\n")
    from_file = runner.invoke(main, ["mirror", "--dry-run", "--spec", str(spec), "--out", str(tmp_path / "o")])
    for result in (cli, from_file):
        assert result.exit_code != 0
        assert "a bug" not in result.output
        assert text in result.output
        assert "out of range" in result.output


def test_the_earliest_time_round_trips_through_the_spec():
    spec = parse_spec({"exclude_newer": "0001-01-01T00:00:00-01:00"}, "w")
    assert format_utc(spec.exclude_newer) == "0001-01-01T01:00:00Z"
    assert parse_spec(spec.to_data(), "again") == spec


@given(st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)),
       st.integers(-23 * 60, 23 * 60))
def test_any_offset_time_is_a_spec_or_one_line(when, minutes):
    aware = when.replace(microsecond=0, tzinfo=dt.timezone(dt.timedelta(minutes=minutes)))
    try:
        spec = parse_spec({"exclude_newer": aware.isoformat()}, "w")
    except SpecError as exc:
        spec, message = None, str(exc)
    if spec is None:
        assert "\n" not in message
    else:
        assert parse_spec(spec.to_data(), "again") == spec
