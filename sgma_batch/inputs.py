"""Bounded reading of the small input files sgma-batch takes from users (AOI, job spec, model card,
manifest records, catalogue JSON): a size bound, a nesting-depth bound, and one-line errors.

Every reader here refuses, before parsing:

* a path that is not a regular file (``/dev/zero``, a FIFO, a directory) - reading those never ends
  or allocates without bound;
* a file larger than ``max_bytes``;
* bytes that are not UTF-8 (a binary file);
* JSON/YAML nested deeper than ``max_depth`` (the C JSON parser and PyYAML recurse);
* YAML aliases (``*name``: the "billion laughs" expansion) and YAML timestamps that are not dates.

The caller passes the error class of its input kind, so each failure keeps its documented exit code.
Parsing results are plain JSON values; validation into typed values is the caller's (pydantic at the
edges, or the checks in :func:`finite_number`).
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from sgma_batch.errors import PlanTooLargeError, SgmaError

__all__ = [
    "MAX_DEPTH",
    "MAX_INPUT_BYTES",
    "check_plan_size",
    "checked_crs",
    "finite_number",
    "json_depth",
    "load_json_file",
    "load_yaml_file",
    "parse_json_text",
    "read_text_bounded",
]

#: Default bound on an input file: AOIs, specs, cards and records are kilobytes; 64 MiB is generous.
MAX_INPUT_BYTES = 64 << 20
#: Default bound on nesting: GeoJSON MultiPolygons need 5 levels, specs and cards fewer than 10.
MAX_DEPTH = 64

#: Planning guards (``run``/``plan``): output pixels and tiles of one store, windows of one job spec.
MAX_PLAN_PIXELS = 4 * 10**10  # 200,000 x 200,000 px: 40,000 km2 at 1 m, 4,000,000 km2 at 10 m
MAX_PLAN_TILES = 250_000
MAX_PLAN_PERIODS = 10_000


def read_text_bounded(
    path: str | Path, *, what: str, error: type[SgmaError], max_bytes: int = MAX_INPUT_BYTES, hint: str = ""
) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes``, else ``error`` with a one-line message."""
    p = Path(path)
    tail = f"; {hint}" if hint else ""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {exc.strerror or type(exc).__name__}{tail}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise error(f"{what} {p} is {kind}; give a regular file{tail}")
        if info.st_size > max_bytes:
            raise error(f"{what} {p} is {info.st_size:,} bytes, above the {max_bytes:,}-byte bound{tail}")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:  # the file may grow while read: stop one byte past the bound
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise error(f"{what} {p} is larger than the {max_bytes:,}-byte bound{tail}")
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {exc.strerror or type(exc).__name__}{tail}") from None
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {p} is not UTF-8 text (byte {exc.start}); give a text file{tail}") from None


def _text_depth(text: str) -> int:
    """Deepest bracket nesting of JSON (or YAML flow) text, outside strings; linear, no recursion."""
    depth = best = 0
    in_str = escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


def json_depth(value: Any) -> int:
    """Nesting depth of a JSON-like value (a scalar is 0), computed without recursion."""
    best = 0
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
            best = max(best, d + 1)
        elif isinstance(v, (list, tuple)):
            stack.extend((x, d + 1) for x in v)
            best = max(best, d + 1)
    return best


def parse_json_text(
    text: str, *, what: str, name: str, error: type[SgmaError], max_depth: int = MAX_DEPTH, hint: str = ""
) -> Any:
    """JSON text -> value, refusing nesting deeper than ``max_depth`` before the parser recurses."""
    tail = f"; {hint}" if hint else ""
    if _text_depth(text) > max_depth:
        raise error(f"{what} {name} is nested deeper than {max_depth} levels{tail}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} {name} is not JSON (line {exc.lineno}: {exc.msg}){tail}") from None
    except (RecursionError, ValueError) as exc:
        raise error(f"{what} {name} cannot be parsed ({type(exc).__name__}){tail}") from None


def load_json_file(
    path: str | Path, *, what: str, error: type[SgmaError], max_bytes: int = MAX_INPUT_BYTES,
    max_depth: int = MAX_DEPTH, hint: str = "",
) -> Any:
    """A JSON file read with :func:`read_text_bounded` and parsed with :func:`parse_json_text`."""
    text = read_text_bounded(path, what=what, error=error, max_bytes=max_bytes, hint=hint)
    return parse_json_text(text, what=what, name=str(path), error=error, max_depth=max_depth, hint=hint)


def _yaml_loader(max_depth: int) -> type:
    import yaml

    class _BoundedLoader(yaml.SafeLoader):
        """SafeLoader without aliases and with a nesting bound."""

        _depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"line {mark.line + 1}: aliases (*name) are not allowed")
            self._depth += 1
            try:
                if self._depth > max_depth:
                    mark = self.peek_event().start_mark
                    raise yaml.YAMLError(f"line {mark.line + 1}: nested deeper than {max_depth} levels")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return _BoundedLoader


def load_yaml_file(
    path: str | Path, *, what: str, error: type[SgmaError], max_bytes: int = MAX_INPUT_BYTES,
    max_depth: int = MAX_DEPTH, hint: str = "",
) -> Any:
    """A YAML file read with a size bound, parsed without aliases and with a depth bound."""
    import yaml

    tail = f"; {hint}" if hint else ""
    text = read_text_bounded(path, what=what, error=error, max_bytes=max_bytes, hint=hint)
    if "\x00" in text:
        raise error(f"{what} {path} holds NUL bytes (a binary file?); give a YAML text file{tail}")
    try:
        return yaml.load(text, Loader=_yaml_loader(max_depth))  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None and "line" not in first else ""
        raise error(f"{what} {path} is not valid YAML{where}: {first}{tail}") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # timestamps like 2024-02-30, 99999-01-01
        raise error(f"{what} {path} has a value YAML cannot convert ({exc}){tail}") from None


def finite_number(value: Any, *, what: str, error: type[SgmaError], positive: bool = False) -> float:
    """``value`` as a finite float (NaN and infinities refused; ``positive``: > 0), else ``error``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{what} must be a number, got {type(value).__name__}")
    x = float(value)
    if not math.isfinite(x) or (positive and not x > 0):
        raise error(f"{what} must be a finite{' positive' if positive else ''} number, got {value!r}")
    return x


def check_plan_size(*, pixels: float | None = None, tiles: float | None = None, periods: float | None = None,
                    hint: str = "") -> None:
    """Refuse plans above the guards; written so that NaN fails every check instead of passing it."""
    tail = f"; {hint}" if hint else ""
    for count, bound, word in ((pixels, MAX_PLAN_PIXELS, "output pixels"), (tiles, MAX_PLAN_TILES, "tiles"),
                               (periods, MAX_PLAN_PERIODS, "time windows")):
        if count is None:
            continue
        if not (count <= bound):  # NaN compares False: refused
            shown = f"{count:,.0f}" if math.isfinite(count) else str(count)
            raise PlanTooLargeError(f"the job plans {shown} {word}, above the guard of {bound:,}{tail}")


def checked_crs(crs: str | None) -> str | None:
    """``--crs`` checked to be a projected CRS pyproj knows (metres), else UsageError (exit 2)."""
    from sgma_batch.errors import UsageError

    if crs is None:
        return None
    text = str(crs).strip()
    if not text or len(text) > 4096:
        raise UsageError(f"--crs {crs!r} is not a CRS; give one like EPSG:3035 or a UTM zone EPSG:326NN")
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        parsed = CRS.from_user_input(text)
    except (CRSError, ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UsageError(f"--crs {crs!r} is not a CRS pyproj knows ({reason}); give one like EPSG:3035") from None
    if not parsed.is_projected:
        raise UsageError(f"--crs {crs!r} is not a projected CRS (--res is in metres); give one like EPSG:3035 "
                         "or leave it out for the AOI's UTM zone")
    return text
