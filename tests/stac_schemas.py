"""Offline STAC validation: the item schema and every extension schema an item declares, with every
``$ref`` resolved from the vendored copies in ``tests/schemas/stac`` (sources and licences in its
SOURCES.md). Nothing is fetched: a reference to a schema that is not vendored is an error."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

SCHEMAS = Path(__file__).resolve().parent / "schemas" / "stac"
ITEM_SCHEMA = "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"
# RFC 3339 date-time (section 5.6), UTC: what STAC requires of every datetime field
_RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$")
DATETIME_FIELDS = ("datetime", "start_datetime", "end_datetime", "created", "updated")


def _url(path: Path) -> str:
    return "https://" + path.relative_to(SCHEMAS).as_posix()


def _retrieve(uri: str) -> Resource:
    raise NoSuchResource(ref=uri)  # offline: only what the registry holds


def registry() -> Registry:
    resources = []
    for path in sorted(SCHEMAS.rglob("*.json")):
        resources.append((_url(path), Resource.from_contents(json.loads(path.read_text()))))
    return Registry(retrieve=_retrieve).with_resources(resources).crawl()


def errors(item: dict[str, Any]) -> list[str]:
    """Every schema violation of ``item`` (core item schema and each declared extension), as readable lines;
    plus RFC 3339 UTC checks of the datetime fields (the schemas' ``format`` needs an optional checker)."""
    reg = registry()
    out = []
    for schema_url in (ITEM_SCHEMA, *item.get("stac_extensions", [])):
        schema = reg.contents(schema_url)
        validator = jsonschema.Draft7Validator(schema, registry=reg, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
        for e in validator.iter_errors(item):
            where = "/".join(str(p) for p in e.absolute_path)
            out.append(f"{schema_url.split('/')[-3] if 'extensions' in schema_url else 'item'}: {where}: {e.message[:300]}")
    places = [item.get("properties", {}), *item.get("assets", {}).values()]
    for fields in places:
        for name in DATETIME_FIELDS:
            value = fields.get(name)
            if value is None:
                continue
            if not isinstance(value, str) or not _RFC3339_UTC.match(value):
                out.append(f"{name} {value!r} is not an RFC 3339 UTC date-time")
                continue
            datetime.fromisoformat(value)  # a real date (no month 13)
    return out


def assert_valid(item: dict[str, Any]) -> None:
    problems = errors(item)
    assert not problems, "\n".join(problems)
