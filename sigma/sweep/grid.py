"""Sweep grids: a YAML file → validated, typed parameter values → one run per point.

A grid file names a notebook and lists values per parameter; the runs are the cartesian
product::

    notebook: notebooks/01_original.py   # relative to the working directory
    name: 01_original                    # optional: the sweep folder (default: notebook name)
    parameters:
      laplace_beta: [1.0, 10.0]
      epochs: [20]

Every value is checked against the notebook's parameters cell (read with
``papermill.inspect_notebook``) — names, types, ranges — before anything runs: a bad grid
raises ValueError naming the key and saying what was expected. A run is named by its sorted
``key=value`` pairs joined by ``_`` (``epochs=20_laplace_beta=10``): :func:`run_name`.
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from sigma.sweep.notebook import read_notebook
from sigma.sweep.records import METRICS_PARAMETER

TYPES = ("float", "int", "str", "bool")
_NUMBER = r"[-+]?(?:inf|∞|\d+(?:\.\d*)?(?:e[-+]?\d+)?|\.\d+(?:e[-+]?\d+)?)"
_INTERVAL = re.compile(rf"\bin\s*([\[(])\s*({_NUMBER})\s*,\s*({_NUMBER})\s*([\])])", re.I)
_BOUND = re.compile(rf"(?<![<>=!])(>=|<=|≥|≤|>|<)\s*({_NUMBER})(?![\w.])", re.I)
_SAFE_STR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass(frozen=True)
class Range:
    """An interval of allowed values: lo < v (or ≤ when closed) and v < hi (or ≤)."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_closed: bool = False
    hi_closed: bool = False

    def __contains__(self, value) -> bool:
        above = value >= self.lo if self.lo_closed else value > self.lo
        below = value <= self.hi if self.hi_closed else value < self.hi
        return above and below

    def __str__(self) -> str:
        if self.hi == math.inf:
            return f"{'≥' if self.lo_closed else '>'} {format_value(self.lo)}"
        if self.lo == -math.inf:
            return f"{'≤' if self.hi_closed else '<'} {format_value(self.hi)}"
        return (
            f"in {'[' if self.lo_closed else '('}{format_value(self.lo)}, "
            f"{format_value(self.hi)}{']' if self.hi_closed else ')'}"
        )


def parse_range(text: str) -> Range | None:
    """The range stated in a parameter's comment, or None.

    Understood: ``in (0, 1)``, ``in [1, 100]``, ``in [0, inf)``, ``> 0``, ``≥ 1``, ``< 1``,
    ``≤ 1``. (Papermill skips a parameter line holding two ``=``: write ``≥``, not ``>=``.)
    """
    m = _INTERVAL.search(text)
    if m:
        lo, hi = _number(m.group(2)), _number(m.group(3))
        return Range(lo, hi, lo_closed=m.group(1) == "[", hi_closed=m.group(4) == "]")
    m = _BOUND.search(text)
    if m:
        op, value = m.group(1), _number(m.group(2))
        if op in (">", ">=", "≥"):
            return Range(lo=value, lo_closed=op != ">")
        return Range(hi=value, hi_closed=op != "<")
    return None


@dataclass(frozen=True)
class Parameter:
    """One assignment of a notebook's ``parameters`` cell."""

    name: str
    type: str | None  # "float", "int", "str", "bool", another annotation, or None if unknown
    default: object
    help: str
    range: Range | None
    range_source: str = ""
    default_text: str = ""  # the default as written in the cell (for non-literal defaults)


def declared_parameters(nb, where: str = "the notebook") -> dict[str, Parameter]:
    """The parameters a notebook declares, read with ``papermill.inspect_notebook``.

    The type is the annotation, else the type of the literal default. The range comes from the
    comment (:func:`parse_range`; none when it states none: the notebook, not this generic
    code, knows its parameters). Raises ValueError if papermill
    cannot read an assignment of the cell (it skips lines with two ``=``).
    """
    import papermill

    found = papermill.inspect_notebook(nb)
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is not None:
        try:
            tree = ast.parse(cell.source)
        except SyntaxError as exc:
            raise ValueError(f"{where}: the parameters cell is not valid Python: {exc}") from exc
        for node in tree.body:
            target = node.target if isinstance(node, ast.AnnAssign) else None
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
            if isinstance(target, ast.Name) and target.id not in found:
                line = cell.source.splitlines()[node.lineno - 1].strip()
                raise ValueError(
                    f"{where}: papermill cannot read the parameter line {line!r} (it skips lines "
                    "holding more than one '='): remove the '=' from its comment (write ≥, ≤)"
                )
    params = {}
    for name, info in found.items():
        try:
            default = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            default = None
        type_name = None if info["inferred_type_name"] == "None" else info["inferred_type_name"]
        if type_name is None and type(default).__name__ in TYPES:
            type_name = type(default).__name__
        rng, source = parse_range(info["help"]), "its comment in the parameters cell"
        params[name] = Parameter(
            name, type_name, default, info["help"], rng, source, info["default"]
        )
    return params


def check_value(param: Parameter, value, where: str):
    """``value`` converted to the parameter's type, or ValueError saying what is wrong.

    float takes ints and numeric strings (PyYAML reads ``1e-3`` as a string) and must be
    finite; int, bool and str must be exactly that.
    """
    if value is None or isinstance(value, list | dict | tuple | set):
        raise ValueError(f"{where}: {value!r} is not a single value")
    kind = param.type
    if kind == "float":
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(
                    f"{where}: {value!r} is not a number ({param.name} is a float)"
                ) from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: {value!r} is not a number ({param.name} is a float)")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} is not finite")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: {value!r} is not an int ({param.name} is an int)")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {value!r} is not true/false ({param.name} is a bool)")
    elif kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"{where}: {value!r} is not a string ({param.name} is a str)")
    elif kind is not None:
        raise ValueError(
            f"{where}: {param.name} is annotated {kind!r}; a sweep sets only float, int, str "
            "and bool parameters"
        )
    elif not isinstance(value, bool | int | float | str):
        raise ValueError(f"{where}: {value!r} is not a number, string or bool")
    if param.range is not None and not isinstance(value, str | bool) and value not in param.range:
        raise ValueError(
            f"{where}: {value!r} is out of range: {param.name} must be {param.range} "
            f"(from {param.range_source})"
        )
    return value


def check_parameters(nb, values: dict, where: str = "the notebook") -> dict:
    """Check single values for a notebook's parameters (``reports run -p``); returns them typed."""
    if not values:
        return {}
    declared = declared_parameters(nb, where)
    checked = {}
    for name, value in values.items():
        _check_name(name, declared, where)
        checked[name] = check_value(declared[name], value, f"{where}: parameter {name!r}")
    return checked


@dataclass(frozen=True)
class Grid:
    """A validated grid: the notebook, the sweep's name and the typed values per parameter."""

    notebook: Path
    name: str
    parameters: dict[str, tuple]
    declared: dict[str, Parameter] = field(repr=False, compare=False)
    source: object = field(default=None, repr=False, compare=False)  # the NotebookNode

    def points(self) -> list[dict]:
        """The runs: the cartesian product of the values, one dict per run."""
        keys = list(self.parameters)
        return [
            dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*self.parameters.values())
        ]

    def defaults(self) -> dict:
        """Every declared parameter's default, less ``metrics_path`` (:func:`default_values`)."""
        return default_values(self.declared)


def default_values(declared: dict[str, Parameter]) -> dict:
    """{name: default} of declared parameters, less ``metrics_path``: the literal value, or the
    source text of a default that is not a literal (``np.pi``)."""
    return {
        n: p.default if p.default is not None or p.default_text == "None" else p.default_text
        for n, p in declared.items()
        if n != METRICS_PARAMETER
    }


def load_grid(path) -> Grid:
    """Read and validate a grid YAML file (see the module docstring).

    Raises ValueError naming the bad key or value: unknown top-level keys, a parameter the
    notebook does not declare (listing those it does), a value of the wrong type or out of
    range, an empty or duplicated list, ``metrics_path`` in the grid.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"grid file {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a mapping with 'notebook' and 'parameters'")
    unknown = sorted(set(spec) - {"notebook", "name", "parameters"})
    if unknown:
        raise ValueError(
            f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; "
            "a grid has 'notebook', 'parameters' and optionally 'name'"
        )
    for key in ("notebook", "parameters"):
        if key not in spec:
            raise ValueError(f"{path}: missing {key!r}")
    if not isinstance(spec["notebook"], str):
        raise ValueError(f"{path}: 'notebook' must be a path, got {spec['notebook']!r}")
    notebook = Path(spec["notebook"])
    if not notebook.is_file():
        raise ValueError(
            f"{path}: notebook {notebook} not found (relative paths are taken from the working "
            f"directory, {Path.cwd()})"
        )
    name = spec.get("name", notebook.stem)
    if not isinstance(name, str) or not _SAFE_STR.fullmatch(name):
        raise ValueError(f"{path}: 'name' must be a folder name (letters, digits, . _ + -)")
    nb = read_notebook(notebook)
    declared = declared_parameters(nb, str(notebook))
    values = validate_grid(spec["parameters"], declared, f"{path}")
    return Grid(notebook, name, values, declared, nb)


def validate_grid(parameters, declared: dict[str, Parameter], where: str = "grid") -> dict:
    """Check a {name: [values]} mapping against declared parameters; return typed tuples."""
    if not isinstance(parameters, dict) or not parameters:
        raise ValueError(
            f"{where}: 'parameters' must map each parameter name to a list of values, "
            f"got {parameters!r}"
        )
    checked = {}
    for name, values in parameters.items():
        _check_name(name, declared, where, grid=True)
        if isinstance(values, list) and not values:
            raise ValueError(
                f"{where}: parameter {name!r} must be a non-empty list of values, got []: an "
                "empty list means no values, so the grid would have no runs at all; list at "
                f"least one value, e.g. {name}: [{_example(declared[name])}]"
            )
        if not isinstance(values, list):
            hint = ""
            with contextlib.suppress(ValueError):  # the hint only where it is right
                check_value(declared[name], values, where)
                hint = f" (write [{values!r}] for a single value)"
            raise ValueError(
                f"{where}: parameter {name!r} must be a non-empty list of values, got "
                f"{values!r}{hint}"
            )
        typed, seen = [], {}
        for i, value in enumerate(values):
            v = check_value(declared[name], value, f"{where}: parameter {name!r}, value {i}")
            if isinstance(v, str) and not _SAFE_STR.fullmatch(v):
                raise ValueError(
                    f"{where}: parameter {name!r}, value {i}: {v!r} cannot go in a run folder "
                    "name: use letters, digits and . _ + - (not starting with a dot)"
                )
            label = format_value(v)
            if label in seen:
                raise ValueError(
                    f"{where}: parameter {name!r} lists {seen[label]!r} and {value!r}, the "
                    "same value twice"
                )
            seen[label] = value
            typed.append(v)
        checked[name] = tuple(typed)
    longest = run_name({k: max(v, key=lambda x: len(format_value(x))) for k, v in checked.items()})
    if len(longest.encode()) > 200:
        raise ValueError(f"{where}: run names would be too long for a folder ({longest[:60]}...)")
    return checked


def _check_name(name, declared: dict[str, Parameter], where: str, grid: bool = False) -> None:
    if grid and name == METRICS_PARAMETER:
        raise ValueError(f"{where}: {METRICS_PARAMETER!r} is set by the sweep runner; remove it")
    if name not in declared:
        names = ", ".join(n for n in declared if n != METRICS_PARAMETER) or "none"
        raise ValueError(
            f"{where}: parameter {name!r} is not declared in the notebook's parameters cell; "
            f"declared: {names}"
        )


def format_value(value) -> str:
    """A value as it appears in a run name: 10.0 → '10', 0.5 → '0.5', True → 'true'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def run_name(parameters: dict) -> str:
    """The run folder name: sorted ``key=value`` joined by ``_`` (``beta=10_epochs=20``)."""
    return "_".join(f"{k}={format_value(parameters[k])}" for k in sorted(parameters))


def _example(param: Parameter) -> str:
    default = param.default
    return "..." if default is None or isinstance(default, list | dict) else format_value(default)


def _number(text: str) -> float:
    text = text.replace("∞", "inf")
    value = float(text)
    return (
        int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
    )
