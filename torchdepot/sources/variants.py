"""PEP 825 index-level variant metadata (``{name}-{version}-variants.json``) and variant markers.

Pure: bytes in, typed values out, linear in the input and bounded.

- :func:`parse_variants_json` checks the shape PEP 825 gives (``$schema``,
  ``default-priorities.namespace``, ``variants.{label}.{namespace}.{feature}: [values]``,
  the reserved ``null`` label with no properties) and raises :class:`VariantsJsonError`
  (one line naming the file) otherwise. The text is kept as upstream served it.
- ``providers`` (PEP 850) is read into :class:`Provider` records, leniently: an entry this
  module cannot read is left out of :attr:`VariantsJson.providers` (the file is upstream's and
  is relayed as is), never a reason to refuse the file. An entry either names plugin packages
  (``requires``, ``plugin-api``), which a mirror must carry for an installer that runs them, or
  lists static properties (``static-properties``, ordered by ``feature-order`` as uv 0.13.9
  reads it, or by ``default-priorities.feature.{ns}`` as the PEP 850 draft writes it): with
  those a client selects a variant with no plugin at all (:meth:`VariantsJson.static_selects`).
- :func:`is_variants_json` tells a ``{name}-{version}-variants.json`` link on an index page
  from a wheel; :func:`variants_json_name` is that file's name for a project and version.
- :func:`evaluate_variant_markers` rewrites a wheel's METADATA for one label: every variant
  marker atom (``variant_label == 'cuda12.8'``, ``'nvidia' in variant_namespaces``,
  ``'nvidia :: cuda' in variant_features``, ``'nvidia :: cuda :: 12.8' in
  variant_properties``) becomes an always-true or always-false ``python_full_version``
  comparison, so a resolver that does not know variant markers evaluates the rest of the
  marker (Python, platform) for the target as usual. Lines without variant atoms are kept
  byte for byte.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from torchdepot.errors import TorchdepotError, load_json, one_line

MAX_VARIANTS_JSON = 4 * 1024 * 1024  # upstream's file is a few kB; anything huge is refused
NULL_LABEL = "null"
MAX_PROVIDER_REQUIRES = 16  # per namespace: upstream names one plugin package
MAX_PROVIDERS = 64  # namespaces; upstream's torch names three
MAX_STATIC_FEATURES = 64  # per static provider
MAX_STATIC_VALUES = 1024  # per feature (an SM list is ~160)
_NAME = re.compile(r"[a-z0-9_]+")  # namespace and feature names (PEP 825)
_VALUE = re.compile(r"[a-z0-9_.]+")  # feature values and labels
_LABEL = re.compile(r"[0-9a-z_.]{1,16}")
_SUFFIX = "-variants.json"


class VariantsJsonError(TorchdepotError):
    """A ``*-variants.json`` file that is not PEP 825 variant metadata."""


Properties = dict[str, dict[str, tuple[str, ...]]]  # namespace -> feature -> values


@dataclass(frozen=True)
class Provider:
    """One ``providers.{namespace}`` entry (PEP 850). Exactly one of ``requires`` (a plugin an
    installer installs and runs) and ``static`` (the compatible values per feature, best first,
    features in ``feature_order``) is set. ``optional``: disabled unless the user enables it."""

    namespace: str
    requires: tuple[str, ...] = ()  # PEP 508 requirements, normalised
    plugin_api: str | None = None
    static: dict[str, tuple[str, ...]] | None = None  # feature -> compatible values, best first
    feature_order: tuple[str, ...] = ()
    optional: bool = False


@dataclass(frozen=True)
class VariantsJson:
    schema: str
    namespaces: tuple[str, ...]  # default-priorities.namespace, in order
    variants: dict[str, Properties]  # label -> properties
    text: str  # the file as upstream served it (what the mirror stores and hashes)
    providers: dict[str, Provider] = field(default_factory=dict)  # the entries this module could read

    def properties(self, label: str) -> Properties | None:
        return self.variants.get(label)

    def provider_requires(self, label: str) -> tuple[str, ...]:
        """The plugin packages (PEP 508 requirements, as ``providers.{ns}.requires`` names them)
        that select ``label``: those of each namespace the label has properties in and whose
        provider is a plugin. A static provider needs none (PEP 850)."""
        out = [req for ns in self.properties(label) or {} if (p := self.providers.get(ns)) is not None
               for req in p.requires]
        return tuple(dict.fromkeys(out))

    def static_selects(self, label: str) -> bool:
        """Whether a client with no plugin finds ``label`` compatible from this file alone: every
        namespace the label uses has a static provider that is not optional, and each of the
        label's features has a value among that provider's static values (PEP 825: a feature
        matches when any of its values does). ``null`` always does; an unknown label never."""
        props = self.properties(label)
        if props is None:
            return False
        for ns, feats in props.items():
            p = self.providers.get(ns)
            if p is None or p.static is None or p.optional:
                return False
            if any(not set(values) & set(p.static.get(feat, ())) for feat, values in feats.items()):
                return False
        return True

    def static_labels(self) -> tuple[str, ...]:
        """The labels a client with no plugin can select (``null`` among them when listed)."""
        return tuple(lb for lb in self.variants if self.static_selects(lb))

    def subset_text(self, labels: set[str] | frozenset[str]) -> str:
        """The file as upstream wrote it, every key kept (providers, static properties ...),
        but ``variants`` restricted to ``labels``: PEP 825 says an index's variants.json MUST
        list the variants available on that index, and a mirror holds only some builds."""
        doc = json.loads(self.text)
        doc["variants"] = {lb: props for lb, props in doc["variants"].items() if lb in labels}
        return json.dumps(doc, indent=2, sort_keys=False) + "\n"

    def for_labels(self, labels: set[str] | frozenset[str]) -> dict:
        """The document restricted to ``labels`` (the pylock ``variants-json`` table): the
        standard keys only (PEP 825's, and PEP 850's ``providers``, so a lock keeps the static
        properties a client with no plugin selects by), as a plain JSON-shaped dict."""
        doc = json.loads(self.text)
        out: dict = {"$schema": self.schema, "default-priorities": doc["default-priorities"]}
        if isinstance(doc.get("providers"), dict):
            out["providers"] = doc["providers"]
        out["variants"] = {lb: doc["variants"][lb] for lb in sorted(labels) if lb in doc["variants"]}
        return out


def variants_json_name(project: str, version: str) -> str:
    """``{name}-{version}-variants.json`` with the name normalised as in wheel file names."""
    return f"{str(canonicalize_name(project)).replace('-', '_')}-{version}{_SUFFIX}"


def is_variants_json(filename: str) -> bool:
    return filename.endswith(_SUFFIX) and filename.count("-") >= 2


def variants_json_key(filename: str) -> tuple[str, str] | None:
    """``torch-2.10.0-variants.json`` -> (canonical project, version); None for other names."""
    if not is_variants_json(filename):
        return None
    stem = filename[: -len(_SUFFIX)]
    name, _, version = stem.rpartition("-")
    if not name or not version:
        return None
    return str(canonicalize_name(name)), version


def _fail(where: str, why: str) -> VariantsJsonError:
    return VariantsJsonError(f"{where}: not PEP 825 variant metadata ({why})")


def _properties(where: str, label: str, value: object) -> Properties:
    if not isinstance(value, dict):
        raise _fail(where, f"variants.{label} is not an object")
    out: Properties = {}
    for ns, features in value.items():
        if not isinstance(ns, str) or not _NAME.fullmatch(ns) or not isinstance(features, dict):
            raise _fail(where, f"variants.{label}: bad namespace {str(ns)[:40]!r}")
        feats: dict[str, tuple[str, ...]] = {}
        for feat, values in features.items():
            if not isinstance(feat, str) or not _NAME.fullmatch(feat) or not isinstance(values, list):
                raise _fail(where, f"variants.{label}.{ns}: bad feature {str(feat)[:40]!r}")
            if not all(isinstance(v, str) and _VALUE.fullmatch(v) for v in values):
                raise _fail(where, f"variants.{label}.{ns}.{feat}: bad value")
            feats[feat] = tuple(values)
        out[ns] = feats
    return out


def _requirements(value: object) -> tuple[str, ...]:
    """``requires`` as normalised PEP 508 strings; an entry that is not one is left out."""
    out: list[str] = []
    for req in value[:MAX_PROVIDER_REQUIRES] if isinstance(value, list) else ():
        if not isinstance(req, str) or len(req) > 500:
            continue
        try:
            out.append(str(Requirement(req)))
        except InvalidRequirement:
            continue
    return tuple(dict.fromkeys(out))


def _static(entry: dict, pep_order: object) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]] | None:
    """(static properties, feature order) of a static provider entry, or None where it is not
    one a client can use: a bad name or value, or several features with no complete order."""
    static = entry["static-properties"]
    if not isinstance(static, dict) or len(static) > MAX_STATIC_FEATURES:
        return None
    feats: dict[str, tuple[str, ...]] = {}
    for feat, values in static.items():
        if not (isinstance(feat, str) and _NAME.fullmatch(feat) and isinstance(values, list)
                and len(values) <= MAX_STATIC_VALUES
                and all(isinstance(v, str) and _VALUE.fullmatch(v) for v in values)):
            return None
        feats[feat] = tuple(values)
    order = entry.get("feature-order", pep_order)
    if order is None:
        return (feats, tuple(feats)) if len(feats) <= 1 else None
    if not isinstance(order, list) or sorted(o for o in order if isinstance(o, str)) != sorted(feats) \
            or len(order) != len(feats):
        return None
    return feats, tuple(order)


def _providers(doc: dict) -> dict[str, Provider]:
    """The ``providers`` entries this module can read (see the module docstring)."""
    providers = doc.get("providers")
    if not isinstance(providers, dict):
        return {}
    pri = doc.get("default-priorities")
    pep_order = pri.get("feature") if isinstance(pri, dict) else None  # the PEP 850 draft's place
    out: dict[str, Provider] = {}
    for ns, entry in list(providers.items())[:MAX_PROVIDERS]:
        if not isinstance(ns, str) or not _NAME.fullmatch(ns) or not isinstance(entry, dict):
            continue
        optional = entry.get("optional", False)
        if not isinstance(optional, bool):
            continue
        if "static-properties" in entry:
            if "requires" in entry or "plugin-api" in entry:
                continue  # PEP 850: mutually exclusive (uv 0.13.9 refuses the file)
            got = _static(entry, pep_order.get(ns) if isinstance(pep_order, dict) else None)
            if got is not None:
                out[ns] = Provider(namespace=ns, static=got[0], feature_order=got[1], optional=optional)
            continue
        api = entry.get("plugin-api")
        out[ns] = Provider(namespace=ns, requires=_requirements(entry.get("requires")),
                           plugin_api=api if isinstance(api, str) and len(api) <= 500 else None, optional=optional)
    return out


def parse_variants_json(data: bytes, where: str) -> VariantsJson:
    """Bytes of a ``variants.json`` (index level) or ``variant.json`` (in a wheel) -> VariantsJson."""
    if len(data) > MAX_VARIANTS_JSON:
        raise _fail(where, f"larger than {MAX_VARIANTS_JSON} bytes")
    try:
        text = data.decode("utf-8")
        doc = load_json(text, where)
    except (UnicodeDecodeError, TorchdepotError) as exc:
        raise _fail(where, f"not JSON: {one_line(exc, 80)}") from None
    if not isinstance(doc, dict):
        raise _fail(where, "not an object")
    schema = doc.get("$schema")
    if not isinstance(schema, str) or not schema:
        raise _fail(where, "no $schema")
    pri = doc.get("default-priorities")
    ns = pri.get("namespace") if isinstance(pri, dict) else None
    if not isinstance(ns, list) or not all(isinstance(n, str) and _NAME.fullmatch(n) for n in ns) \
            or len(set(ns)) != len(ns):
        raise _fail(where, "default-priorities.namespace is not a list of unique namespaces")
    variants = doc.get("variants")
    if not isinstance(variants, dict):
        raise _fail(where, "no variants object")
    parsed: dict[str, Properties] = {}
    for label, props in variants.items():
        if not isinstance(label, str) or not _LABEL.fullmatch(label):
            raise _fail(where, f"bad variant label {str(label)[:40]!r}")
        parsed[label] = _properties(where, label, props)
        if label == NULL_LABEL and any(parsed[label].values()):
            raise _fail(where, "the null variant has properties")
        missing = [n for n in parsed[label] if n not in ns]
        if missing:
            raise _fail(where, f"namespace {missing[0]!r} of {label} is not in default-priorities.namespace")
    return VariantsJson(schema=schema, namespaces=tuple(ns), variants=parsed, text=text, providers=_providers(doc))


# -- variant markers ------------------------------------------------------------------------
_TRUE = "python_full_version >= '0'"
_FALSE = "python_full_version < '0'"
_Q = r"""(?:'([^'\n]*)'|"([^"\n]*)")"""
_ATOMS = (
    re.compile(rf"variant_label\s*(==|!=)\s*{_Q}"),
    re.compile(rf"{_Q}\s*(==|!=)\s*variant_label"),
    re.compile(rf"{_Q}\s*(not\s+in|in)\s*(variant_namespaces|variant_features|variant_properties)"),
)


def _members(props: Properties, which: str) -> set[str]:
    if which == "variant_namespaces":
        return {ns for ns, feats in props.items() if any(feats.values())}
    if which == "variant_features":
        return {f"{ns} :: {f}" for ns, feats in props.items() for f, vals in feats.items() if vals}
    return {f"{ns} :: {f} :: {v}" for ns, feats in props.items() for f, vals in feats.items() for v in vals}


def _norm(text: str) -> str:
    return " :: ".join(part.strip() for part in text.split("::"))


def evaluate_marker_text(marker: str, label: str, props: Properties) -> str:
    """``marker`` with every variant atom replaced by a constant comparison for ``label``."""
    def label_atom(m: re.Match, op_first: bool) -> str:
        op, value = (m.group(1), m.group(2) if m.group(2) is not None else m.group(3)) if op_first else \
            (m.group(3), m.group(1) if m.group(1) is not None else m.group(2))
        return _TRUE if (value == label) == (op == "==") else _FALSE

    def member_atom(m: re.Match) -> str:
        value = m.group(1) if m.group(1) is not None else m.group(2)
        negate = m.group(3).split()[0] == "not"
        return _TRUE if (_norm(value) in _members(props, m.group(4))) != negate else _FALSE

    marker = _ATOMS[0].sub(lambda m: label_atom(m, True), marker)
    marker = _ATOMS[1].sub(lambda m: label_atom(m, False), marker)
    return _ATOMS[2].sub(member_atom, marker)


def has_variant_markers(metadata: bytes) -> bool:
    return b"variant_" in metadata


def evaluate_variant_markers(metadata: bytes, label: str, props: Properties) -> bytes:
    """METADATA with the variant markers of its ``Requires-Dist`` lines evaluated for ``label``."""
    if not has_variant_markers(metadata):
        return metadata
    out = []
    for line in metadata.split(b"\n"):
        if line[:14].lower() == b"requires-dist:" and b"variant_" in line and b";" in line:
            text = line.decode("utf-8", "replace")
            req, _, marker = text.partition(";")
            line = f"{req};{evaluate_marker_text(marker, label, props)}".encode()
        out.append(line)
    return b"\n".join(out)
