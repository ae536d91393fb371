"""MemberDirectory, and the membership query a MailingList runs over it (Kavi's dynamic lists)."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from enum import Enum
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from .common import Manifest, Strict

OPERATORS = ("is", "is_not", "contains", "not_contains", "before", "after", "on")
_RELATIVE = re.compile(r"^now(?:([+-])(\d+)([dwmy]))?$")


class FieldType(str, Enum):
    string = "string"
    enum = "enum"
    date = "date"
    datetime = "datetime"
    bool = "bool"
    int = "int"


class DirectoryField(Strict):
    type: FieldType
    values: list[str] = Field(default_factory=list, description="The allowed values of an enum field.")
    column: str | None = Field(default=None, description="Column name, when it differs from the field's name.")


class SqlSource(Strict):
    url: str = Field(min_length=1, description="SQLAlchemy URL: sqlite:///path.db or postgresql+psycopg://...")
    table: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$", description="A table or a view.")


class CsvSource(Strict):
    path: str = Field(min_length=1, description="A CSV file with a header row.")


class Source(Strict):
    sql: SqlSource | None = None
    csv: CsvSource | None = None

    @model_validator(mode="after")
    def _one(self) -> "Source":
        if (self.sql is None) == (self.csv is None):
            raise ValueError("give exactly one of sql or csv")
        return self


class MemberDirectorySpec(Strict):
    source: Source
    email: str = Field(default="email", description="The column holding each member's primary address.")
    alternate_addresses: list[str] = Field(default_factory=list,
                                           description="Columns of other addresses a member may post from.")
    fields: dict[str, DirectoryField] = Field(default_factory=dict)


class MemberDirectory(Manifest):
    """Where dynamic lists find their members: an SQL table or view, or a CSV file."""

    KIND: ClassVar[str] = "MemberDirectory"
    kind: Literal["MemberDirectory"]
    spec: MemberDirectorySpec

    def problems(self, index) -> list[tuple[tuple, str]]:
        return [(("spec", "fields", name, "values"), "an enum field needs its values")
                for name, f in self.spec.fields.items() if f.type is FieldType.enum and not f.values]


class Criterion(Strict):
    """One condition: a field and exactly one operator with its value(s)."""

    model_config = Strict.model_config | {"populate_by_name": True}

    field: str
    is_: Any = Field(default=None, alias="is")
    is_not: Any = None
    contains: str | None = None
    not_contains: str | None = None
    before: str | date | None = None
    after: str | date | None = None
    on: str | date | None = None

    @model_validator(mode="after")
    def _one_operator(self) -> "Criterion":
        given = [op for op in OPERATORS if self.value_of(op) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one operator of {', '.join(OPERATORS)}")
        return self

    def value_of(self, op: str) -> Any:
        return getattr(self, "is_" if op == "is" else op)

    @property
    def operator(self) -> str:
        return next(op for op in OPERATORS if self.value_of(op) is not None)

    @property
    def value(self) -> Any:
        return self.value_of(self.operator)


class Members(Strict):
    directory: str = Field(description="metadata.name of a MemberDirectory.")
    query: list[Criterion] = Field(default_factory=list, description="All must hold; empty selects everyone.")


def resolve_date(value: str | date, now: datetime) -> date:
    """'2024-05-01', 'now', 'now-30d', 'now+3m', 'now+1y' -> a date (months and years by calendar)."""
    if isinstance(value, date):
        return value
    match = _RELATIVE.match(value.strip())
    if not match:
        return date.fromisoformat(value.strip())
    sign, amount, unit = match.groups()
    today = now.date()
    if not sign:
        return today
    n = int(amount) * (1 if sign == "+" else -1)
    if unit in ("d", "w"):
        return today + timedelta(days=n * (7 if unit == "w" else 1))
    months = n * (12 if unit == "y" else 1)
    year, month = divmod(today.month - 1 + months, 12)
    year += today.year
    day = min(today.day, [31, 29 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 28, 31, 30, 31, 30,
                          31, 31, 30, 31, 30, 31][month])
    return date(year, month + 1, day)


def criterion_problems(criterion: Criterion, directory: MemberDirectorySpec) -> list[tuple[str, str]]:
    """(field of the criterion, message) for each way it does not fit the directory's declared fields."""
    f = directory.fields.get(criterion.field)
    if f is None:
        known = ", ".join(sorted(directory.fields)) or "none declared"
        return [("field", f"unknown field {criterion.field!r} (fields: {known})")]
    op, value = criterion.operator, criterion.value
    fits = {FieldType.string: ("is", "is_not", "contains", "not_contains"),
            FieldType.enum: ("is", "is_not"),
            FieldType.bool: ("is", "is_not"),
            FieldType.int: ("is", "is_not"),
            FieldType.date: ("is", "is_not", "before", "after", "on"),
            FieldType.datetime: ("before", "after", "on")}[f.type]
    key = "is" if op == "is" else op
    if op not in fits:
        article = "an" if f.type.value[0] in "aeiou" else "a"
        return [(key, f"operator {op} does not fit {article} {f.type.value} field (use {', '.join(fits)})")]
    values = value if isinstance(value, list) else [value]
    problems = []
    for v in values:
        if f.type is FieldType.enum and v not in f.values:
            problems.append((key, f"{v!r} is not a value of {criterion.field} ({', '.join(f.values)})"))
        elif f.type is FieldType.bool and not isinstance(v, bool):
            problems.append((key, f"{criterion.field} is a bool: use true or false"))
        elif f.type is FieldType.int and (isinstance(v, bool) or not isinstance(v, int)):
            problems.append((key, f"{criterion.field} is an int: use a whole number"))
        elif f.type in (FieldType.date, FieldType.datetime):
            try:
                resolve_date(v, datetime(2000, 1, 1))
            except (ValueError, TypeError):
                problems.append((key, f"{v!r} is not a date: use YYYY-MM-DD or now, now-30d, now+3m, now+1y"))
    if op in ("before", "after", "on", "contains", "not_contains") and isinstance(value, list):
        problems.append((key, f"{op} takes one value"))
    return problems
