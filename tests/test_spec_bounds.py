"""Bounds on the spec loader (issue 13) and the keys added with them (issues 14, 16).

Hostile files end as ONE line naming the file (and the key, where there is one), fast:
alias bombs, /dev/zero, UTF-16 and binary files, deep nesting, 5,000-digit numbers.
A hypothesis fuzz of load_spec: only SpecError ever leaves it.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchdepot.errors import SpecError
from torchdepot.model.presets import UPSTREAM_PRESETS
from torchdepot.spec.conda import CondaConfig
from torchdepot.spec.mirror import Channel, HashPolicy, load_spec, parse_spec, with_overrides

BIG = "9" * 5000


def spec_error(path: Path) -> str:
    t0 = time.monotonic()
    with pytest.raises(SpecError) as info:
        load_spec(path)
    elapsed = time.monotonic() - t0
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{path}: "), msg
    assert len(msg) < 3000, msg
    assert elapsed < 2, f"{elapsed:.1f} s"
    return msg


def write(tmp_path: Path, content: str | bytes, name: str = "mirror.yaml") -> Path:
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


def alias_bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [{','.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_fails_fast_in_one_line(tmp_path):
    text = alias_bomb()
    assert len(text.encode()) <= 400  # the size the 2026-12-02 attack used
    msg = spec_error(write(tmp_path, text))
    assert "alias" in msg
    # Anchors and a few aliases remain usable.
    ok = write(tmp_path, "pythons: &py ['3.11']\ntargets: [{python: '3.10'}]\naccelerators: [cpu]\n", "ok.yaml")
    assert load_spec(ok).pythons == ("3.11",)


def test_dev_zero_and_huge_files_are_refused_by_size(tmp_path):
    msg = spec_error(Path("/dev/zero"))
    assert "larger than" in msg
    assert "larger than" in spec_error(write(tmp_path, "# " + "x" * (300 * 1024) + "\n"))


def test_unreadable_specs(tmp_path):
    assert "cannot read spec" in spec_error(tmp_path)  # a directory
    assert "cannot read spec" in spec_error(tmp_path / "missing.yaml")


@pytest.mark.parametrize(("content", "expected"), [
    ("accelerators: [cpu]\n".encode("utf-16"), "is UTF-16"),
    ("accelerators: [cpu]\n".encode("utf-16-le"), "NUL bytes"),  # no BOM
    ("accelerators: [cpu]\n".encode("utf-32"), "is UTF-32"),
    ("out: caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at line 1)"),
    (bytes(range(256)) * 4, "not UTF-8"),
    (b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 100, "NUL bytes"),
])
def test_encodings(tmp_path, content, expected):
    assert expected in spec_error(write(tmp_path, content))


def test_utf8_bom_is_accepted(tmp_path):
    assert load_spec(write(tmp_path, "\ufeffaccelerators: [cpu]\n".encode())).accelerators == ("cpu",)


@pytest.mark.parametrize(("content", "expected"), [
    ("targets: " + "[" * 200 + "]" * 200 + "\n", "targets[0][0]"),
    ("conda:\n" + "".join("  " * i + "  k:\n" for i in range(60)), "conda.k.k"),
    ("packages: " + "{a: " * 500 + "1" + "}" * 500, "nested deeper than"),
    ("[" * 20000, "nested deeper than"),  # would be a RecursionError in the composer
])
def test_deep_nesting(tmp_path, content, expected):
    msg = spec_error(write(tmp_path, content))
    assert expected in msg
    assert "nested deeper than 32 levels" in msg


@pytest.mark.parametrize(("content", "key"), [
    (f"accelerators: [cu{BIG}]", "accelerators[0]"),
    (f"accelerators: ['rocm{BIG}.1']", "accelerators[0]"),
    (f"packages: ['torch=={BIG}']", "packages[0]"),
    (f"packages: {{torch: '>=2.{BIG}'}}", "packages.torch"),
    (f"pythons: ['3.{BIG}']", "pythons[0]"),
    (f"jobs: {BIG}", "jobs"),
    (f"keep: {BIG}", "keep"),
    (f"targets: [{{accelerator: cpu, torch: '{BIG}'}}]", "targets[0].torch"),
    (f"exclude_newer: {BIG}-01-01", "exclude_newer"),
    (f"{BIG}: 1", "at line 1"),
    ("jobs: 1e99999", None),  # a float overflow: inf is not a whole number
    (f"out: {'x' * 10000}", "out"),
])
def test_huge_numbers_and_values_name_the_key(tmp_path, content, key):
    msg = spec_error(write(tmp_path, content + "\n"))
    if key:
        assert key in msg
    assert BIG not in msg


def test_conda_section_is_validated_by_the_loader(tmp_path):
    bad = write(tmp_path, "conda:\n  channels: [{name: x, mirrors: ['ftp://bad']}]\n")
    assert "conda.channels[0].mirrors[0]: 'ftp://bad' is not an http(s):// or file:// URL" in spec_error(bad)
    good = write(tmp_path, "platforms: [linux-x86_64]\npythons: ['3.11']\nconda:\n  channels: [conda-forge]\n"
                 "  specs: [pytorch]\n", "good.yaml")
    spec = load_spec(good)
    assert isinstance(spec.conda, CondaConfig)
    assert spec.conda.all_subdirs == ("linux-64", "noarch")
    assert parse_spec(spec.to_data(), "again") == spec


def test_new_keys(tmp_path):
    spec = load_spec(write(tmp_path, "\n".join([
        "keep: 2",
        "allow_hosts: [Files.Mirror.Example., cache.lab]",
        "exclude_newer: 2026-06-01T00:00:00Z",
        "channel: test/variant",
        "upstreams: [ustc, 'https://torch.lab.example/whl/', official]",
        "on_hash_mismatch: warn",
        "connections: 32",
        "connections_per_host: 4",
    ]) + "\n"))
    assert spec.keep == 2
    assert spec.allow_hosts == ("files.mirror.example", "cache.lab")
    assert spec.exclude_newer == dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)
    assert spec.channel is Channel.TEST_VARIANT
    assert spec.channel == "test/variant"
    assert spec.on_hash_mismatch is HashPolicy.WARN
    assert (spec.connections, spec.connections_per_host) == (32, 4)
    assert spec.upstreams == (UPSTREAM_PRESETS["ustc"].base, "https://torch.lab.example/whl",
                              UPSTREAM_PRESETS["official"].base)
    data = spec.to_data()
    assert data["exclude_newer"] == "2026-06-01T00:00:00Z"
    assert data["channel"] == "test/variant"
    assert parse_spec(data, "again") == spec
    # Defaults: absent from the stored spec, so old manifests stay byte-identical.
    plain = parse_spec({}, "x")
    assert plain.keep is None
    assert plain.allow_hosts == ()
    assert plain.exclude_newer is None
    assert not {"keep", "allow_hosts", "exclude_newer", "conda", "fsync", "targets", "connections",
                "connections_per_host"} & set(plain.to_data())
    assert parse_spec({"channel": "variant"}, "x").channel is Channel.VARIANT
    assert parse_spec({"exclude_newer": "2026-06-01"}, "x").exclude_newer == dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)
    assert parse_spec({"exclude_newer": dt.date(2026, 6, 1)}, "x").exclude_newer.tzinfo is dt.timezone.utc


@pytest.mark.parametrize(("data", "expected"), [
    ({"keep": 0}, "keep: 0 is not a whole number from 1 to 1000"),
    ({"connections": 0}, "connections: 0 is not a whole number from 1 to 256"),
    ({"connections_per_host": "8"}, "connections_per_host: '8' is not a whole number from 1 to 64"),
    ({"connections": 4, "connections_per_host": 8}, "connections_per_host: 8 is more than connections (4)"),
    ({"keep": True}, "keep: True is not a whole number"),
    ({"allow_hosts": ["http://x.example"]}, "allow_hosts[0]: 'http://x.example' is not a host name"),
    ({"allow_hosts": "a b"}, "allow_hosts[0]: 'a b' is not a host name"),
    ({"exclude_newer": "2026-06-01T00:00:00"}, "exclude_newer: '2026-06-01T00:00:00' has no time zone"),
    ({"exclude_newer": "soon"}, "exclude_newer: 'soon' is not a date or time"),
    ({"channel": "variants"}, "channel: 'variants' is not one of stable, test, nightly, variant, test/variant"),
    ({"upstreams": ["tuna"]}, "upstreams[0]: 'tuna' is not an http(s):// or file:// URL nor a preset (aliyun, nju,"),
    ({"upstreams": ["https://a.example/\nindex-url = x"]}, "upstreams[0]:"),
])
def test_new_key_errors(data, expected):
    with pytest.raises(SpecError) as info:
        parse_spec(data, "mirror.yaml")
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_with_overrides_replaces_and_validates_only_what_changed():
    spec = parse_spec({"accelerators": ["cpu", "cu126"], "pythons": ["3.11"], "platforms": ["linux-x86_64"],
                       "conda": {"channels": ["conda-forge"], "specs": ["pytorch"]}, "keep": 3}, "x")
    same = with_overrides(spec, out=None, jobs=None)
    assert same is spec
    new = with_overrides(spec, out="/srv/torch", jobs=8, upstreams=["sjtu"], allow_hosts=["a.example"],
                         exclude_newer="2026-01-02T03:04:05+01:00", on_hash_mismatch="warn",
                         targets=[{"accelerator": "cu118", "python": "3.10", "platform": "linux-x86_64"}])
    assert new.out == Path("/srv/torch")
    assert new.jobs == 8
    assert new.keep == 3
    assert new.conda == spec.conda
    assert new.upstreams == (UPSTREAM_PRESETS["sjtu"].base,)
    assert new.allow_hosts == ("a.example",)
    assert new.exclude_newer == dt.datetime(2026, 1, 2, 2, 4, 5, tzinfo=dt.timezone.utc)
    assert [t.id for t in new.extra_targets] == ["cu118-py310-linux-x86_64"]
    assert parse_spec(new.to_data(), "again") == new
    for change, expected in [({"jobs": 0}, "command line: jobs: 0"), ({"upstreams": ["nope"]}, "command line: upstreams[0]"),
                             ({"exclude_newer": "x"}, "command line: exclude_newer"),
                             ({"targets": [{"python": "2.7"}]}, "command line: targets[0].python")]:
        with pytest.raises(SpecError, match=expected.replace("[", r"\[").replace("]", r"\]")):
            with_overrides(spec, **change)


# -- fuzz: bytes and YAML-shaped text into load_spec ----------------------------------------

_TOKENS = st.sampled_from([
    "packages", "accelerators", "pythons", "platforms", "channel", "upstreams", "conda", "channels", "specs",
    "targets", "keep", "allow_hosts", "exclude_newer", "jobs", "out", ":", " ", "\n", "  ", "- ", "[", "]", "{", "}",
    ",", "&a ", "*a", "!!binary ", "!!python/object ", "'", '"', "#", "cpu", "cu128", "3.11", "host", "ustc",
    "2026-06-01T00:00:00Z", "9" * 40, "1e400", "---\n", "...\n", "%YAML 1.1\n", "\t", "\x00", "\ufeff", "é",
])
yaml_like = st.lists(_TOKENS, max_size=40).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(yaml_like.map(str.encode), st.binary(max_size=200),
                 yaml_like.map(lambda t: t.encode("utf-16"))))
def test_load_spec_fuzz_gives_a_spec_or_one_line_spec_error(tmp_path, content):
    p = tmp_path / "fuzz.yaml"
    p.write_bytes(content)
    error = None
    try:
        spec = load_spec(p)
    except SpecError as exc:
        error = str(exc)
    if error is not None:
        assert "\n" not in error
        assert error.startswith(f"{p}: ")
        return
    assert spec.targets()
    assert parse_spec(spec.to_data(), "again") == spec


def test_the_optional_keys_documented_in_the_committed_spec_parse(tmp_path):
    """mirror/mirror.yaml documents the optional keys as comments: uncommented, they must validate."""
    import re

    text = (Path(__file__).resolve().parent.parent / "mirror" / "mirror.yaml").read_text(encoding="utf-8")
    head, tail = text.split("# Optional keys", 1)
    # the per-target keys, and the regional ones (which exclude targets, keep and conda) on their own
    per_target, regional = tail.split("\n", 1)[1].split("# A regional operator's mirror", 1)
    uncomment = lambda block: re.sub(r"(?m)^# ?(?=[a-z ]{1,4}[a-z{-])", "", block)  # noqa: E731
    spec = load_spec(write(tmp_path, head + uncomment(per_target)))
    assert spec.keep == 2
    assert spec.allow_hosts
    assert spec.exclude_newer
    assert spec.fsync
    assert spec.extra_targets
    assert isinstance(spec.conda, CondaConfig)
    spec = load_spec(write(tmp_path, head + uncomment(regional.split("\n", 1)[1])))
    assert spec.releases == ">=2.0"
    assert (spec.max_files, spec.max_bytes) == (100000, 10 * 10**12)
