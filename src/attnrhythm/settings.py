"""Declaring a setting once: its default, its help text and its command-line flag.

Every parameter of the analysis and the credit is a dataclass field made by :func:`setting`
(default + help + flag). Bigger settings are composed of smaller ones with :func:`nested`:
:class:`~attnrhythm.method.credit.CreditConfig` inside
:class:`~attnrhythm.analyze.AnalysisConfig` inside
:class:`~attnrhythm.rollout.config.RhythmCreditConfig` inside the trainers' settings.

Users still write flat keys (``q: 0.3`` or ``window: 4`` in a YAML file, ``--q 0.3`` on the
command line, ``RhythmCreditConfig(q=0.3)`` in Python). :class:`Composed` maps them onto the
nested configs, here and nowhere else: a flat key names the declared field of that name,
searched outer config first (an outer field shadows an inner one of the same name).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from attnrhythm.errors import AttnRhythmError

_MISSING: Any = dataclasses.MISSING


def setting(
    default: Any = _MISSING,
    *,
    help: str,
    flag: str | None = None,
    short: str | None = None,
    flat: str | None = None,
) -> Any:
    """A dataclass field that is a user setting: ``default``, ``help`` and its ``flag``.

    ``flag`` defaults to ``--name-with-dashes``; ``short`` is a one-letter alias (``-k``).
    ``flat``, when given, names the attribute whose value stands for this field in the flat
    form (e.g. the path of a heads file that the field holds parsed).
    """
    metadata = {"help": help, "flag": flag, "short": short, "flat": flat}
    return dataclasses.field(default=default, metadata=metadata)


def nested(cls: type, **defaults: Any) -> Any:
    """A field holding a whole settings dataclass ``cls`` (built with ``defaults`` unless given)."""
    return dataclasses.field(
        default_factory=lambda: cls(**defaults), metadata={"nested": cls, "defaults": defaults}
    )


def is_setting(f: dataclasses.Field) -> bool:
    return "help" in f.metadata


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return _MISSING


def declared(cls: type) -> dict[str, tuple[tuple[str, ...], dataclasses.Field]]:
    """Flat name -> (attribute path, field) of every setting of ``cls`` and its nested configs.

    Own fields come first; a nested config's field is reachable by its own name unless an
    outer field already has that name.
    """
    out: dict[str, tuple[tuple[str, ...], dataclasses.Field]] = {}
    inner: list[tuple[str, type]] = []
    for f in dataclasses.fields(cls):
        if "nested" in f.metadata:
            inner.append((f.name, f.metadata["nested"]))
        elif is_setting(f):
            out[f.name] = ((f.name,), f)
    for name, sub in inner:
        for key, (path, f) in declared(sub).items():
            out.setdefault(key, ((name, *path), f))
    return out


def field_of(cls: type, name: str) -> dataclasses.Field:
    """The declaration of setting ``name`` (flat) in ``cls`` or its nested configs."""
    found = declared(cls).get(name)
    if found is None:
        raise KeyError(f"{cls.__name__} declares no setting {name!r}")
    return found[1]


def help_of(cls: type, name: str) -> str:
    return field_of(cls, name).metadata["help"]


def default(cls: type, name: str) -> Any:
    """The default of flat setting ``name`` in ``cls`` (a nesting config's own default wins)."""
    path, f = declared(cls)[name]
    outer = cls
    for part in path[:-1]:
        holder = {x.name: x for x in dataclasses.fields(outer)}[part]
        if name in holder.metadata["defaults"]:
            return holder.metadata["defaults"][name]
        outer = holder.metadata["nested"]
    return default_of(f)


def _build_nested(f: dataclasses.Field, given: Any, values: dict[str, Any], source: str) -> Any:
    cls = f.metadata["nested"]
    if isinstance(given, Mapping):  # e.g. the flat form of the config, sent to a worker
        values = {**dict(given), **values}
        given = None
    if given is None:
        return build(cls, {**f.metadata["defaults"], **values}, source=source)
    if values:
        return build(cls, {**flatten(given), **values}, source=source)
    return given


def route(cls: type, values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Flat ``values`` as keyword arguments of ``cls``: nested settings built from their flat names."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    flat = declared(cls)
    own: dict[str, Any] = {}
    routed: dict[str, dict[str, Any]] = {n: {} for n, f in fields.items() if "nested" in f.metadata}
    for key, value in values.items():
        if key in fields:
            own[key] = value
        elif key in flat and flat[key][0][0] in routed:
            routed[flat[key][0][0]][key] = value
        else:
            raise AttnRhythmError(
                f"unknown setting '{key}' in {source}: valid ones are {', '.join(sorted(flat_names(cls)))}"
            )
    for name, f in fields.items():
        if "nested" in f.metadata and (name in own or routed[name]):
            own[name] = _build_nested(f, own.get(name), routed[name], source)
    return own


def build(cls: type, values: Mapping[str, Any], *, source: str = "settings") -> Any:
    """``cls`` from flat ``values`` (own field names and any nested config's setting names)."""
    if issubclass(cls, Composed):
        obj = cls.__new__(cls)
        obj._init(values, source)
        return obj
    return cls(**route(cls, values, source))


def flat_names(cls: type) -> list[str]:
    """Every name ``cls`` accepts: its own fields and the flat names of its nested settings."""
    own = [f.name for f in dataclasses.fields(cls) if f.init and "nested" not in f.metadata]
    return list(dict.fromkeys([*own, *declared(cls)]))


def flatten(obj: Any, *, top: bool = True) -> dict[str, Any]:
    """The flat form of a settings dataclass: each setting by its name, nested ones included.

    ``top``: also the object's own fields that are not user settings (e.g. a dict of options).
    """
    out: dict[str, Any] = {}
    inner = []
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        if "nested" in f.metadata:
            inner.append(getattr(obj, f.name))
            continue
        if not (top or is_setting(f)):
            continue
        source = f.metadata.get("flat")
        value = getattr(obj, source, None) if source else None
        out[f.name] = value if value is not None else getattr(obj, f.name)
    for sub in inner:
        for key, value in flatten(sub, top=False).items():
            out.setdefault(key, value)
    return out


class Composed:
    """Mixin of a settings dataclass (``@dataclass(init=False)``) composed of nested settings.

    ``Cls(**values)`` takes its own fields and the flat names of its nested configs' settings
    (``RhythmCreditConfig(q=0.3, window=4)``); a nested field may also be given whole, as a
    config or as a mapping. ``obj.q`` reads the nested value (no copy is kept), ``obj.flat()``
    gives the flat form back. Unknown names fail in one line.
    """

    _source = "settings"

    def __init__(self, **values: Any) -> None:
        self._init(values, self._source)

    def _init(self, values: Mapping[str, Any], source: str) -> None:
        given = route(type(self), values, source)
        for f in dataclasses.fields(self):
            if f.name in given:
                value = given[f.name]
            elif "nested" in f.metadata:
                value = _build_nested(f, None, {}, source)
            else:
                value = default_of(f)
                if value is _MISSING:
                    raise AttnRhythmError(f"missing setting '{f.name}' in {source}")
            object.__setattr__(self, f.name, value)
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails: a flat name of a nested setting
        if name.startswith("_"):
            raise AttributeError(name)
        found = declared(type(self)).get(name)
        if found is None or len(found[0]) == 1:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        obj: Any = self
        for part in found[0]:
            obj = getattr(obj, part)
        return obj

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name (nested configs included)."""
        return flatten(self)
