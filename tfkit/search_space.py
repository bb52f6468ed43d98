"""The search space of ``tfkit tune``: a YAML mapping of dotted config keys to specs.

:func:`load_space` reads and validates it into a :class:`SearchSpace` of
:class:`Param` (one tuned key each) plus fixed overrides; :data:`TUNERS` names the
algorithms that search it (their oracles are built in :mod:`tfkit.tune`). This
module imports neither Keras nor Keras Tuner, so the command line takes its
choices from here without importing TensorFlow.

Example:
    >>> space = load_space({"train.lr": {"choice": [0.1, 0.01]}, "train.epochs": 2})
    >>> space.keys, space.config_for(Config(), {"train.lr": 0.01}).train.epochs
    (['train.lr'], 2)
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from tfkit.config import Config, ConfigError, config_from_dict, config_to_dict, read_yaml
from tfkit.utils import TfkitError

__all__ = ["SPEC_KEYS", "TUNERS", "DEFAULT_TUNER", "Param", "SearchSpace", "load_space"]

SPEC_KEYS = ("choice", "min", "max", "step", "log", "boolean", "fixed", "default")
TUNERS = ("random", "bayesian", "hyperband")  # tfkit.tune.build_oracle builds one of these by name
DEFAULT_TUNER = "random"


@dataclass(frozen=True)
class Param:
    """One tuned config key.

    Attributes:
        key: dotted config key, e.g. ``"train.lr"`` (also the hyperparameter name).
        kind: ``"choice"``, ``"int"``, ``"float"`` or ``"boolean"``.
        values: the choices (``kind == "choice"``), already coerced to the field's type.
        min, max, step: range bounds and optional step (``int`` / ``float``).
        log: sample the range log-uniformly.
        default: the value Keras Tuner starts from (``None``: its own default).
        encoded: choices that are not plain scalars (lists, ``None``) travel
            through Keras Tuner as JSON strings.
    """

    key: str
    kind: str
    values: tuple = ()
    min: float | None = None
    max: float | None = None
    step: float | None = None
    log: bool = False
    default: Any = None
    encoded: bool = False

    def declare(self, hp: Any) -> None:
        """Register this parameter on a ``keras_tuner.HyperParameters``."""
        sampling = "log" if self.log else "linear"
        if self.kind == "choice":
            values = [json.dumps(v) for v in self.values] if self.encoded else list(self.values)
            default = json.dumps(self.default) if self.encoded and self.default is not None else self.default
            hp.Choice(self.key, values, default=default)
        elif self.kind == "int":
            hp.Int(self.key, int(self.min), int(self.max), step=None if self.step is None else int(self.step),
                   sampling=sampling, default=self.default)
        elif self.kind == "float":
            hp.Float(self.key, float(self.min), float(self.max), step=self.step, sampling=sampling,
                     default=self.default)
        else:
            hp.Boolean(self.key, default=bool(self.default))

    def decode(self, raw: Any) -> Any:
        """The config value for a raw Keras Tuner value."""
        return json.loads(raw) if self.encoded else raw


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: tuned parameters plus fixed overrides.

    Build it with :func:`load_space`.
    """

    params: tuple[Param, ...]
    fixed: Mapping[str, Any]
    source: str = "search space"

    @property
    def keys(self) -> list[str]:
        """The tuned config keys, in file order."""
        return [p.key for p in self.params]

    def declare(self, hp: Any) -> None:
        """Register every tuned parameter on ``hp`` (``keras_tuner.HyperParameters``)."""
        for p in self.params:
            p.declare(hp)

    def values_from(self, hp_values: Mapping[str, Any]) -> dict[str, Any]:
        """Config values (decoded) of the tuned keys present in ``hp_values``."""
        return {p.key: p.decode(hp_values[p.key]) for p in self.params if p.key in hp_values}

    def check(self, base: Config, manifest: Any) -> None:
        """Every value a trial can draw gives a valid config (each choice, both ends of each range).

        Checked one key at a time on top of ``base`` and the fixed keys, before
        the tuning folder exists: a bad choice such as ``data.batch_size: {choice: [0, 8]}``
        fails here in one line instead of as a failed trial.

        Raises:
            TfkitError: naming the key, the value and what is wrong with it.
        """
        from tfkit.checks import validate  # imports Keras: only when a space is checked, not for --help

        validate(self.config_for(base, {}), manifest)
        for p in self.params:
            candidates = {"choice": list(p.values), "boolean": [False, True]}.get(p.kind, [p.min, p.max])
            for value in candidates:
                try:
                    validate(self.config_for(base, {p.key: value}), manifest)
                except TfkitError as e:
                    raise TfkitError(f"{self.source}: {p.key}={value!r} would give an invalid trial ({e})") from None

    def config_for(self, base: Config, values: Mapping[str, Any]) -> Config:
        """The full config of one trial: ``base``, then the fixed keys, then ``values``.

        Choosing ``augment.preset`` resets the augment section to that preset
        (the base's own augment keys describe another preset); other
        ``augment.*`` keys of the space still apply on top.

        Args:
            base: the base training config.
            values: dotted key -> config value (as from :meth:`values_from`).

        Returns:
            A new :class:`Config`; ``base`` is not modified.
        """
        merged = {**self.fixed, **values}
        nested = config_to_dict(base)
        if "augment.preset" in merged:
            nested["augment"] = {}
        for key, value in merged.items():
            section, name = key.split(".", 1)
            nested[section][name] = value
        try:
            return config_from_dict(nested)
        except ConfigError as e:
            raise TfkitError(f"{self.source}: {e}") from None


def _field_type(section: str, name: str) -> Any:
    section_cls = type(getattr(Config(), section))
    return typing.get_type_hints(section_cls)[name]


def _number_kind(annotation: Any) -> str | None:
    """'int' / 'float' for numeric fields (Optional allowed), else None."""
    args = typing.get_args(annotation) or (annotation,)
    args = [a for a in args if a is not type(None)]
    if args == [int]:
        return "int"
    if args == [float]:
        return "float"
    return None


def _check_value(source: str, key: str, value: Any) -> Any:
    """Coerce ``value`` for ``key`` through tfkit.config; a clear error otherwise."""
    section, name = key.split(".", 1)
    try:
        cfg = config_from_dict({section: {name: value}})
    except ConfigError as e:
        raise TfkitError(f"{source}: {e}") from None
    return getattr(getattr(cfg, section), name)


def _flatten(source: str, mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys, accepting nested sections (``train: {lr: ...}``) too."""
    sections = {f.name for f in dataclasses.fields(Config)}
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        key = str(key)
        if key in sections and isinstance(value, Mapping) and not (set(value) & set(SPEC_KEYS)):
            for sub, spec in value.items():
                flat[f"{key}.{sub}"] = spec
        else:
            flat[key] = value
    for key in flat:
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in sections:
            raise TfkitError(
                f"{source}: unknown config key '{key}' (expected section.key with a section among: "
                f"{', '.join(sorted(sections))})"
            )
        fields = {f.name for f in dataclasses.fields(type(getattr(Config(), parts[0])))}
        if parts[1] not in fields:
            raise TfkitError(
                f"{source}: unknown config key '{key}' (expected one of: "
                f"{', '.join(f'{parts[0]}.{f}' for f in sorted(fields))})"
            )
        if dataclasses.is_dataclass(getattr(getattr(Config(), parts[0]), parts[1])):
            raise TfkitError(f"{source}: '{key}' is a section, not a key")
    return flat


def _parse_param(source: str, key: str, spec: Mapping[str, Any]) -> Param | tuple[str, Any]:
    unknown = sorted(set(map(str, spec)) - set(SPEC_KEYS))
    where = f"{source}: {key}"
    if unknown:
        raise TfkitError(f"{where}: unknown spec key(s) {unknown} (expected some of: {', '.join(SPEC_KEYS)})")
    forms = [f for f in ("choice", "boolean", "fixed") if f in spec] + (["range"] if {"min", "max"} & set(spec) else [])
    if len(forms) != 1:
        raise TfkitError(
            f"{where}: expected exactly one of {{choice: [...]}}, {{min: .., max: ..}}, {{boolean: true}}, "
            f"{{fixed: value}}; got {dict(spec)!r}"
        )
    form = forms[0]
    extra = {"choice": {"step", "log", "min", "max"}, "boolean": {"step", "log", "min", "max"},
             "fixed": {"step", "log", "min", "max", "default"}, "range": set()}[form] & set(spec)
    if extra:
        raise TfkitError(f"{where}: {sorted(extra)} cannot be used with {form}")
    default = spec.get("default")
    if form == "fixed":
        return key, _check_value(source, key, spec["fixed"])
    if form == "boolean":
        if spec["boolean"] is not True:
            raise TfkitError(f"{where}: write {{boolean: true}} to tune a true/false key, got {spec['boolean']!r}")
        if _field_type(*key.split(".", 1)) is not bool:
            raise TfkitError(f"{where}: {{boolean: true}} needs a true/false key; {key} is {_field_type(*key.split('.', 1))}")
        if default is not None:
            _check_value(source, key, default)
        return Param(key, "boolean", default=default)
    if form == "choice":
        raw = spec["choice"]
        if not isinstance(raw, list) or not raw:
            raise TfkitError(f"{where}: choice expects a non-empty list, got {raw!r}")
        values = [_check_value(source, key, v) for v in raw]
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise TfkitError(f"{where}: choice has duplicate values {raw!r}")
        if key == "model.name":
            from tfkit.models import list_models

            known = list_models()
            bad = [v for v in values if v not in known]
            if bad:
                raise TfkitError(f"{where}: unknown model(s) {bad} (see tfkit.models.list_models())")
        scalar_types = {type(v) for v in values}
        encoded = not (len(scalar_types) == 1 and scalar_types <= {int, float, str, bool})
        if default is not None:
            default = _check_value(source, key, default)
            if default not in values:
                raise TfkitError(f"{where}: default {default!r} is not among the choices {values!r}")
        return Param(key, "choice", values=tuple(values), default=default, encoded=encoded)
    # range
    kind = _number_kind(_field_type(*key.split(".", 1)))
    if kind is None:
        raise TfkitError(f"{where}: min/max needs a numeric key; use {{choice: [...]}} for {key}")
    if "min" not in spec or "max" not in spec:
        raise TfkitError(f"{where}: a range needs both min and max, got {dict(spec)!r}")
    lo, hi, step, log = spec["min"], spec["max"], spec.get("step"), spec.get("log", False)
    if kind == "float":  # YAML 1.1 reads 1e-4 (no dot) as a string; tfkit.config reads it as the number
        lo, hi = (_check_value(source, key, v) if isinstance(v, str) else v for v in (lo, hi))
        if isinstance(step, str):
            step = _check_value(source, key, step)
    for name, v in (("min", lo), ("max", hi)) + ((("step", step),) if step is not None else ()):
        ok = isinstance(v, int) if kind == "int" else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok:
            raise TfkitError(f"{where}: {name} must be {'an integer' if kind == 'int' else 'a number'}, got {v!r}")
    if not isinstance(log, bool):
        raise TfkitError(f"{where}: log must be true or false, got {log!r}")
    if not lo < hi:
        raise TfkitError(f"{where}: min must be below max, got min={lo!r} max={hi!r}")
    if step is not None and step <= 0:
        raise TfkitError(f"{where}: step must be positive, got {step!r}")
    if log and lo <= 0:
        raise TfkitError(f"{where}: log sampling needs min > 0, got min={lo!r}")
    if log and step is not None and step <= 1:
        raise TfkitError(f"{where}: with log: true, step is a multiplier and must exceed 1, got {step!r}")
    for v in (lo, hi):
        _check_value(source, key, v)
    if default is not None:
        default = _check_value(source, key, default)
        if not lo <= default <= hi:
            raise TfkitError(f"{where}: default {default!r} is outside [{lo}, {hi}]")
    return Param(key, kind, min=lo, max=hi, step=step, log=log, default=default)


def load_space(space: str | os.PathLike | Mapping[str, Any]) -> SearchSpace:
    """Read and validate a search space.

    Args:
        space: a YAML file (``yaml.safe_load``) or an already-parsed mapping of
            dotted config keys (or nested sections) to specs: ``{choice: [...]}``,
            ``{min, max[, step][, log]}`` (int or float by the key's type),
            ``{boolean: true}``, ``{fixed: value}`` or a bare fixed value. Any
            spec may add ``default``.

    Returns:
        The validated :class:`SearchSpace`.

    Raises:
        TfkitError: an unknown key (named), a malformed spec, a value of the
            wrong type for its key, or a space that tunes nothing.

    Example:
        >>> s = load_space({"train.lr": {"min": 1e-4, "max": 1e-2, "log": True}, "train.epochs": 2})
        >>> s.keys, dict(s.fixed)
        (['train.lr'], {'train.epochs': 2})
    """
    if not isinstance(space, (str, os.PathLike)):
        source, mapping = "search space", space
    else:
        source = str(space)
        mapping = read_yaml(space, "search space file")
    if not isinstance(mapping, Mapping):
        raise TfkitError(f"{source}: expected a mapping of config keys to specs, got {type(mapping).__name__}")
    params: list[Param] = []
    fixed: dict[str, Any] = {}
    for key, spec in _flatten(source, mapping).items():
        if isinstance(spec, Mapping):
            parsed = _parse_param(source, key, spec)
        else:
            parsed = (key, _check_value(source, key, spec))
        if isinstance(parsed, Param):
            params.append(parsed)
        else:
            fixed[parsed[0]] = parsed[1]
    if not params:
        raise TfkitError(f"{source}: the space tunes nothing (give at least one key a choice, range or boolean)")
    return SearchSpace(tuple(params), fixed, source)
