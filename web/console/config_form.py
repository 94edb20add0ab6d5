"""Config forms: fields from the settings schema, labels from config.example.toml, values into tomlkit edits."""

from __future__ import annotations

import json
import re
import tomllib
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import parse_qsl, urlsplit

import tomlkit
import tomlkit.items
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

import adapters.registry  # registers the platform sections
from core.config import Settings
from core.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent.parent / "config.example.toml"
Kind = Literal["bool", "choice", "int", "float", "text", "lines", "ids", "pairs", "secret"]
BOOL_CHOICES = ("true", "false")  # an optional bool: not set, yes or no
Loc = tuple[str | int, ...]
# Values of fields named like these are secrets, as core.config.collect_secrets treats them.
_SECRET_NAME = re.compile(r"(key|token|secret|password|passwd)$", re.IGNORECASE)
# chatgpt-mirai-qq-bot v2 spelled some tables differently; the loader reads both (core.config._ALIASES).
_ALIASES: dict[tuple[str, ...], str] = {("openai", "gpt_params"): "gpt3_params"}


# --- labels and help from config.example.toml ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExampleNotes:
    """The comments of config.example.toml: each section's leading comment and each key's comment."""

    sections: dict[str, str]
    keys: dict[tuple[str, str], str]

    def key(self, table: str, name: str) -> tuple[str, str]:
        """(label, help) for `name` in `table` ("openai.accounts"); the key itself when undocumented."""
        lines = self.keys.get((table, name), "").splitlines()
        if not lines:
            return name, ""
        end = 1
        while end < len(lines) and lines[end - 1].endswith(_CONTINUED):  # a sentence broken over lines
            end += 1
        return "".join(lines[:end]), "\n".join(lines[end:])


_CONTINUED = ("，", "；", "：", "、", ",", ";", ":")
_HEADER = re.compile(r"^#?\s*\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?\s*(#.*)?$")
_COMMENTED_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=")


def parse_example(text: str) -> ExampleNotes:
    """Read the comments of an example config: the comment lines directly above `key = value` (or
    above a commented-out `# key = value`) are the key's; those after a section header its section's."""
    sections: dict[str, str] = {}
    keys: dict[tuple[str, str], str] = {}
    table, pending, first_key = "", list[str](), True
    for raw in text.splitlines():
        line = raw.strip()
        header = _HEADER.match(line)
        if header:
            table, pending, first_key = header.group(1), [], True
            continue
        key = _key_of(line)
        if key is None:
            comment = line[1:].strip() if line.startswith("#") else ""
            if comment:
                pending.append(comment)
            else:
                pending = []  # a blank line or a lone "#" ends a comment block
            continue
        if first_key:
            split = _first_key_split(pending, key)
            if split:  # a one-line block is the first key's own
                sections.setdefault(table, "\n".join(pending[:split]))
            pending, first_key = pending[split:], False
        keys.setdefault((table, key), "\n".join(pending))
        pending = []
    return ExampleNotes(sections, keys)


def _key_of(line: str) -> str | None:
    """The key of `key = value` or of a commented-out `# key = value` that is valid TOML."""
    body = line[1:].strip() if line.startswith("#") else line
    match = _COMMENTED_KEY.match(body)
    if match is None:
        return None
    if line.startswith("#"):
        try:
            tomllib.loads(body)
        except tomllib.TOMLDecodeError:
            return None  # prose that happens to contain "=", like `output_mode = "refuse" 时…`
    return match.group(1)


def _first_key_split(block: list[str], key: str) -> int:
    """Where a section's first comment block turns from the section to its first key: at the line
    naming the key, else half way (one line: it serves both)."""
    for index, line in enumerate(block):
        if index and re.search(rf"(?<![A-Za-z0-9_]){re.escape(key)}(?![A-Za-z0-9_])", line):
            return index
    return len(block) // 2


@lru_cache(maxsize=1)
def example_notes() -> ExampleNotes:
    """The comments of the shipped config.example.toml (none when it is missing)."""
    try:
        return parse_example(EXAMPLE.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return ExampleNotes({}, {})


# --- the form model ------------------------------------------------------------------------------


@dataclass(slots=True)
class FormField:
    """One key's input; `key` names it as the loader does ("response.timeout", "onebot[1].ws_url")."""

    key: str
    name: str
    kind: Kind
    label: str
    help: str
    text: str  # the value as the form shows it ("" for secrets)
    is_set: bool = False  # a secret has a non-empty value in the file
    choices: tuple[str, ...] = ()
    optional: bool = False  # empty removes the key (the setting goes back to "not set")
    multiline: bool = False
    error: str = ""


@dataclass(slots=True)
class FormGroup:
    """The keys of one table: a section, a nested table or one entry of an array of tables."""

    key: str
    title: str
    help: str
    table: Loc  # where the table is in the document
    fields: list[FormField]
    unknown: list[str] = field(default_factory=list)  # keys the schema does not know, kept as they are
    error: str = ""
    array: str = ""  # the entry's array ("openai.accounts", "onebot") when this group is one entry of it
    entry: int = 0  # the entry's index in that array


@dataclass(slots=True)
class SectionForm:
    """Everything one `/config/<section>` page edits."""

    name: str
    help: str
    platform: bool
    absent: bool  # the section is not in the file yet: a change adds it
    groups: list[FormGroup]
    error: str = ""
    arrays: list[EntryArray] = field(default_factory=list)  # arrays of tables the page adds entries to
    adding: EntryArray | None = None  # the form is a new entry of this array

    def fields(self) -> Iterator[FormField]:
        for group in self.groups:
            yield from group.fields

    def has_errors(self) -> bool:
        return bool(self.error) or any(g.error or any(f.error for f in g.fields) for g in self.groups)


def sections() -> list[tuple[str, type[BaseModel], bool]]:
    """(name, model, is a platform) of every section a form can edit, platforms first."""
    found: list[tuple[str, type[BaseModel], bool]] = [
        (p.name, p.settings, True) for p in adapters.registry.PLATFORMS if p.settings is not None
    ]
    for name, info in Settings.model_fields.items():
        model = info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            found.append((name, model, False))
    return found


def section_form(name: str, document: Mapping[str, Any]) -> SectionForm:
    """The form of section `name` filled from `document` (a parsed config); raises KeyError for an unknown name."""
    found = {n: (m, p) for n, m, p in sections()}
    model, platform = found[name]
    value = document.get(name)
    absent = value is None
    groups: list[FormGroup] = []
    if platform and isinstance(value, list):
        for index in range(len(value)):
            groups += _entry_groups(model, (name, index), f"{name}[{index}]", document, name, index)
    elif platform and not absent:
        groups += _entry_groups(model, (name,), name, document, name, 0)
    else:
        groups += _groups(model, (name,), name, document)
    return SectionForm(name, section_help(name), platform, absent, groups, arrays=entry_arrays(name))


def section_help(name: str) -> str:
    """The section's leading comment in the example, else its settings model's description."""
    found = example_notes().sections.get(name)
    if found:
        return found
    model = next((m for n, m, _ in sections() if n == name), None)
    return (model.__doc__ or "").replace("`", "") if model is not None else ""


def _groups(model: type[BaseModel], table: Loc, key: str, document: Mapping[str, Any]) -> list[FormGroup]:
    """The group of `model`'s own keys, then its nested tables and arrays of tables."""
    notes = example_notes()
    doc_name = _doc_name(table)
    current = lookup(document, table)
    values = current if isinstance(current, Mapping) else {}
    own = FormGroup(key, _title(key, values), notes.sections.get(doc_name, ""), table, [])
    nested: list[FormGroup] = []
    for name, info in model.model_fields.items():
        shape = _shape(info.annotation)
        if shape.model is not None and not shape.many:
            nested += _groups(shape.model, (*table, name), f"{key}.{name}", document)
        elif shape.model is not None:
            entries = values.get(name)
            for index in range(len(entries) if isinstance(entries, list) else 0):
                entry_key = f"{key}.{name}[{index}]"
                nested += _entry_groups(shape.model, (*table, name, index), entry_key, document, f"{key}.{name}", index)
        else:
            own.fields.append(_field(name, info, shape, key, doc_name, values))
    own.unknown = [str(name) for name in values if str(name) not in model.model_fields and not _is_alias(table, name)]
    return [own, *nested] if own.fields else nested


def _entry_groups(
    model: type[BaseModel], table: Loc, key: str, document: Mapping[str, Any], array: str, index: int
) -> list[FormGroup]:
    """The groups of one entry of an array of tables; the first one carries the entry's place."""
    groups = _groups(model, table, key, document)
    if groups:
        groups[0].array, groups[0].entry = array, index
    return groups


def _title(key: str, values: Mapping[str, Any]) -> str:
    name = values.get("name")
    return f"[{key}] {name}" if isinstance(name, str) and name else f"[{key}]"


def _is_alias(table: Loc, name: object) -> bool:
    return any(tuple(table) == parent[:-1] and name == alias for parent, alias in _ALIASES.items())


def _doc_name(table: Loc) -> str:
    """The table's name as config.example.toml writes its header: "openai.accounts", "qqbot.resource"."""
    return ".".join(str(part) for part in table if isinstance(part, str))


@dataclass(frozen=True, slots=True)
class _Shape:
    kind: Kind
    choices: tuple[str, ...] = ()
    optional: bool = False
    model: type[BaseModel] | None = None
    many: bool = False


def _shape(annotation: Any, optional: bool = False) -> _Shape:
    """What input a field's type needs."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        rest = [arg for arg in get_args(annotation) if arg is not type(None)]
        if rest == [bool]:  # yes / no / not set (the setting's own default): a checkbox has no third state
            return _Shape("choice", BOOL_CHOICES, True)
        return _shape(rest[0], True) if len(rest) == 1 else _Shape("text", optional=optional)
    if origin is Literal:
        return _Shape("choice", tuple(str(arg) for arg in get_args(annotation)), optional)
    if origin in (list, tuple):
        inner = _shape(get_args(annotation)[0]) if get_args(annotation) else _Shape("text")
        if inner.model is not None:
            return _Shape("text", model=inner.model, many=True)
        return _Shape("ids" if origin is tuple else "lines", optional=optional)
    if origin is dict:
        return _Shape("pairs", optional=optional)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _Shape("text", model=annotation)
    simple: dict[Any, Kind] = {SecretStr: "secret", bool: "bool", int: "int", float: "float"}
    return _Shape(simple.get(annotation, "text"), optional=optional)


def _field(
    name: str, info: FieldInfo, shape: _Shape, group_key: str, doc_name: str, values: Mapping[str, Any]
) -> FormField:
    label, help_text = example_notes().key(doc_name, name)
    present = name in values
    value = values[name] if present else _default(info)
    kind = shape.kind
    if kind == "text" and (_SECRET_NAME.search(name) or _has_url_secret(value)):
        kind = "secret"
    text = "" if kind == "secret" else _as_text(kind, value)
    return FormField(
        key=f"{group_key}.{name}",
        name=name,
        kind=kind,
        label=label,
        help=help_text,
        text=text,
        is_set=kind == "secret" and present and bool(_plain(value)),
        choices=shape.choices,
        optional=shape.optional,
        multiline="\n" in text and kind == "text",
    )


def _default(info: FieldInfo) -> Any:
    return None if info.is_required() else info.get_default(call_default_factory=True)


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value.unwrap() if hasattr(value, "unwrap") else value


def _has_url_secret(value: Any) -> bool:
    """A URL with a password or a token parameter in it (`postgresql://u:PASS@h/db`)."""
    value = _plain(value)
    if not isinstance(value, str) or "://" not in value:
        return False
    try:
        parts = urlsplit(value.strip())
        return bool(parts.password) or any(
            _SECRET_NAME.search(k) or k.lower() in ("sig", "signature") for k, _ in parse_qsl(parts.query)
        )
    except ValueError:
        return True  # cannot tell: do not show it


def _as_text(kind: Kind, value: Any) -> str:
    """A value as the form shows it."""
    value = _plain(value)
    if value is None:
        return ""
    if kind == "bool" or isinstance(value, bool):
        return "true" if value is True else "false"
    if kind == "ids" and value in (0, "") and not isinstance(value, bool):
        return ""  # v2 wrote `manager_qq = 0` for "nobody"
    if kind in ("lines", "ids"):
        return "\n".join(str(item) for item in value) if isinstance(value, list | tuple) else str(value)
    if kind == "pairs" and isinstance(value, Mapping):
        # a list value (the groups of a tool's `allowed`) as the TOML array it is written as
        return "\n".join(
            f"{k} = {json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v}" for k, v in value.items()
        )
    return str(value)


# --- the document --------------------------------------------------------------------------------


def lookup(document: Mapping[str, Any], table: Loc) -> Any:
    """The table at `table` in `document`, or None. An index picks an array element; index 0 of a
    plain table is the table itself (a platform section written once)."""
    current: Any = document
    for depth, part in enumerate(table):
        if isinstance(part, int):
            if isinstance(current, list):
                current = current[part] if 0 <= part < len(current) else None
            elif part != 0:
                current = None
        elif isinstance(current, Mapping):
            found = current.get(part)
            alias = _ALIASES.get(tuple(str(p) for p in table[: depth + 1] if isinstance(p, str)))
            current = current.get(alias) if found is None and alias else found
        else:
            current = None
        if current is None:
            return None
    return current


def _ensure(document: tomlkit.TOMLDocument, table: Loc) -> Any:
    """The table at `table`, created (as `[a.b]`) when it is missing."""
    current: Any = document
    for depth, part in enumerate(table):
        found = lookup(document, table[: depth + 1])
        if found is None:
            if isinstance(part, int):
                raise KeyError(table)  # entries of arrays are only edited, never created here
            current.add(part, tomlkit.table())
            found = current[part]
        entry_follows = depth + 1 < len(table) and isinstance(table[depth + 1], int)
        if not isinstance(found, list if entry_follows else Mapping):
            raise ValueError(f"[{_doc_name(table[: depth + 1])}] 在文件里不是表 (is not a table in the file)")
        current = found
    return current


def apply_form(form: SectionForm, values: Mapping[str, Sequence[str]], document: tomlkit.TOMLDocument) -> int:
    """Write the changed fields of `values` (name -> every value sent) into `document`.

    Fields left as they were shown are not touched, so their lines (and comments) stay as written.
    Each field shows what was sent; a value that cannot be read sets the field's error. Returns
    how many keys changed.
    """
    changed = 0
    for group in form.groups:
        for form_field in group.fields:
            sent = values.get(form_field.key)
            if not sent:
                continue  # not in this form: leave it alone
            text = _sent_text(form_field, sent)
            if form_field.kind == "secret" and not text:
                continue  # an empty password input keeps the secret
            if form_field.kind != "secret" and text == form_field.text:
                continue
            if form_field.kind != "secret" and not _has_url_secret(text):
                form_field.text = text  # shown again if the save fails; a password in a URL is not
            try:
                _write(document, group.table, form_field, text)
            except ValueError as exc:
                form_field.error = str(exc)
                continue
            changed += 1
    return changed


def _sent_text(form_field: FormField, sent: Sequence[str]) -> str:
    if form_field.kind == "bool":  # a hidden "false" comes first; a checked box adds "true"
        return "true" if "true" in sent else "false"
    text = sent[-1].replace("\r\n", "\n").replace("\r", "\n")
    return text.strip() if form_field.kind in ("int", "float", "choice") else text


def _write(document: tomlkit.TOMLDocument, table: Loc, form_field: FormField, text: str) -> None:
    """Set (or, for an emptied optional key, remove) one key; raises ValueError for unreadable input."""
    container = _ensure(document, table)
    old = container.get(form_field.name)
    if form_field.optional and text == "" and form_field.kind not in ("text", "secret"):
        if old is not None:
            del container[form_field.name]
        return
    container[form_field.name] = _toml_value(form_field, text, old)


def _toml_value(form_field: FormField, text: str, old: Any) -> Any:
    """The TOML item for what was typed, in the style of the value it replaces."""
    kind = form_field.kind
    if kind == "bool" or (kind == "choice" and form_field.choices == BOOL_CHOICES):
        return text == "true"
    if kind in ("int", "float"):
        return _number(text)
    if kind in ("lines", "ids"):
        items = [line for line in text.split("\n") if line.strip()]
        array = tomlkit.array()
        array.extend([int(i) if kind == "ids" and _is_id_number(i) else i for i in items])
        if isinstance(old, tomlkit.items.Array) and "\n" in old.as_string():
            array.multiline(True)
        return array
    if kind == "pairs":
        return _pairs(text)
    return _string(text, old)


def _number(text: str) -> int | float | str:
    """An int or float as typed; anything else stays text, so the loader names the problem."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _is_id_number(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) < 19


def _pairs(text: str) -> tomlkit.items.InlineTable:
    table = tomlkit.inline_table()
    for line in text.split("\n"):
        if not line.strip():
            continue
        name, equals, value = line.partition("=")
        if not equals or not name.strip():
            raise ValueError("每行写成 名称 = 值 (write one `name = value` a line)")
        value = value.strip()
        table[name.strip().strip("\"'")] = _pair_list(value) if value.startswith("[") else value.strip("\"'")
    return table


def _pair_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, list) else str(value)


def _pair_list(text: str) -> tomlkit.items.Array:
    """A value typed as a TOML array (`["123", "456"]`); ValueError says how to write one."""
    try:
        items = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        raise ValueError('列表写成 ["123", "456"] (write a list as ["123", "456"])') from None
    array = tomlkit.array()
    array.extend(str(item) for item in items)
    return array


def _string(text: str, old: Any) -> tomlkit.items.String:
    """A literal string stays literal ('加载预设 (\\w+)') when it can; a multi-line one stays multi-line."""
    style = old.type if isinstance(old, tomlkit.items.String) else None
    if style is tomlkit.items.StringType.SLL and "'" not in text and "\n" not in text:
        return tomlkit.string(text, literal=True)
    if style in (tomlkit.items.StringType.MLB, tomlkit.items.StringType.MLL) and "\n" in text:
        return tomlkit.string(text, multiline=True)
    return tomlkit.string(text)


# --- entries of arrays of tables -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntryArray:
    """An array of tables a section's page adds entries to and removes them from: `[[openai.accounts]]`,
    or a platform section, which may be written once (`[onebot]`) or many times (`[[onebot]]`)."""

    key: str  # "openai.accounts", "onebot"
    table: Loc  # where the array is in the document
    model: type[BaseModel]
    platform: bool

    @property
    def noun(self) -> str:
        return (
            "连接 (connection)"
            if self.platform
            else "账号 (account)"
            if self.key.endswith("accounts")
            else "项 (entry)"
        )

    @property
    def add_label(self) -> str:
        if self.platform:
            return "添加连接 / Add a connection"
        return "添加账号 / Add an account" if self.key.endswith("accounts") else "添加一项 / Add an entry"


LAST_ENTRY = "这是最后一个{noun}，不能删除；至少需要保留一个 (the last one cannot be removed)"
NO_SUCH_ENTRY = "没有这一项，可能已被删除，请刷新页面 (no such entry: reload the page)"


def entry_arrays(name: str) -> list[EntryArray]:
    """The arrays of tables the page of section `name` can add to: the platform itself, or the
    section's own arrays of tables (`[[openai.accounts]]`)."""
    found = {n: (m, p) for n, m, p in sections()}
    if name not in found:
        return []
    model, platform = found[name]
    if platform:
        return [EntryArray(name, (name,), model, True)]
    arrays: list[EntryArray] = []
    for key, info in model.model_fields.items():
        shape = _shape(info.annotation)
        if shape.model is not None and shape.many:
            arrays.append(EntryArray(f"{name}.{key}", (name, key), shape.model, False))
    return arrays


def find_array(name: str, key: str | None) -> EntryArray | None:
    """Section `name`'s array `key` (its first one when `key` is None or empty), or None."""
    arrays = entry_arrays(name)
    if not key:
        return arrays[0] if arrays else None
    return next((array for array in arrays if array.key == key), None)


def entry_count(document: Mapping[str, Any], array: EntryArray) -> int:
    """How many entries the array has: a platform written once as `[onebot]` has one."""
    found = lookup(document, array.table)
    if isinstance(found, list):
        return len(found)
    return 1 if array.platform and isinstance(found, Mapping) else 0


def _entry_key(array: EntryArray, index: int) -> str:
    return array.key if array.platform and index == 0 else f"{array.key}[{index}]"


def _entry_table(array: EntryArray, index: int) -> Loc:
    """Where a new entry goes: a platform's first one is a plain table (`[onebot]`)."""
    return array.table if array.platform and index == 0 else (*array.table, index)


def new_entry_form(name: str, array: EntryArray, document: Mapping[str, Any]) -> SectionForm:
    """The form of a new entry of `array`, filled with the defaults."""
    index = entry_count(document, array)
    key = _entry_key(array, index)
    table = _entry_table(array, index)
    groups = _groups(array.model, table, key, {})
    for group in groups:
        group.fields.sort(key=lambda f: f.name != "name")  # the name first, as the example writes it
        group.title = f"新{array.noun} (new): [{key}]" if group.table == table else group.title
        group.unknown = []
    return SectionForm(name, section_help(name), array.platform, False, groups, adding=array)


def add_entry(
    form: SectionForm, array: EntryArray, values: Mapping[str, Sequence[str]], document: tomlkit.TOMLDocument
) -> int:
    """Append a new table to `array` in `document` holding the keys of `values` that differ from the
    defaults; a platform written once as `[onebot]` becomes `[[onebot]]` holding both. Comments that
    followed the last entry (they usually belong to what comes next) move below the new entry.
    Returns how many keys the new entry has."""
    index = entry_count(document, array)
    parent = _ensure(document, array.table[:-1])
    name = str(array.table[-1])
    entry = tomlkit.table()
    tail: list[Any] = []
    old = parent.get(name)
    if isinstance(old, tomlkit.items.AoT):
        tail = _detach_tail(old[-1])
        old.append(entry)
    elif isinstance(old, tomlkit.items.Table):
        tail = _detach_tail(old)
        parent[name] = tomlkit.aot()
        parent[name].append(old)
        parent[name].append(entry)
    elif old is None and array.platform:
        parent.add(name, entry)
    elif old is None:
        parent.add(name, tomlkit.aot())
        parent[name].append(entry)
    else:
        raise ValueError(f"[{array.key}] 在文件里不是表 (is not a table in the file)")
    if index and not tail:
        tail = [tomlkit.ws("\n")]  # a blank line before what follows
    written = apply_form(form, values, document)
    entry = lookup(document, _entry_table(array, index))
    if index:
        entry.trivia.indent = "\n"  # a blank line above its header
    for item in tail:
        entry.add(item)
    return written


def remove_entry(array: EntryArray, index: int, document: tomlkit.TOMLDocument) -> None:
    """Remove entry `index` of `array`; raises ValueError (one line) when there is no such entry or it
    is the last account. The last entry of a platform removes the section. Comments that followed
    the removed entry stay where they were."""
    count = entry_count(document, array)
    if not 0 <= index < count:
        raise ValueError(NO_SUCH_ENTRY)
    if count == 1 and not array.platform:
        raise ValueError(LAST_ENTRY.format(noun=array.noun.split(" ")[0]))
    parent = _ensure(document, array.table[:-1])
    name = str(array.table[-1])
    entries = parent[name]
    if count == 1:
        removed = entries[0] if isinstance(entries, tomlkit.items.AoT) else entries
        tail = _detach_tail(removed)
        holder, place = _place_of(document, array.table)
        del parent[name]
        _insert_items(holder, place, tail)
    elif index:
        tail = _detach_tail(entries[index])
        previous = entries[index - 1]
        for item in _without_double_blanks([*_detach_tail(previous), *tail]):
            previous.add(item)
        del entries[index]
    else:
        tail = _detach_tail(entries[0])
        del entries[0]
        _insert_items(*_place_of(document, array.table), tail)


def _container(table: Any) -> Any:
    """The tomlkit Container holding a table's (or the document's) items."""
    return table.value if isinstance(table, tomlkit.items.Table) else table


def _detach_tail(table: Any) -> list[Any]:
    """Take the comments and blank lines that end `table` out of it."""
    body = _container(table).body
    start = len(body)
    while start and body[start - 1][0] is None and isinstance(body[start - 1][1], _TRIVIA):
        start -= 1
    tail = [item for _, item in body[start:]]
    del body[start:]
    return tail


def _ends_blank(item: Any) -> bool:
    """Whether the text of `item` (a blank line, or a table whose last item is one) ends in a blank line."""
    if isinstance(item, tomlkit.items.AoT) and item.body:
        item = item.body[-1]
    if isinstance(item, tomlkit.items.Table):
        body = item.value.body
        return bool(body) and _ends_blank(body[-1][1])
    return isinstance(item, tomlkit.items.Whitespace)


def _without_double_blanks(items: list[Any]) -> list[Any]:
    """Comments and blank lines with no two blank lines in a row."""
    kept: list[Any] = []
    for item in items:
        if not (kept and isinstance(item, tomlkit.items.Whitespace) and isinstance(kept[-1], tomlkit.items.Whitespace)):
            kept.append(item)
    return kept


def _place_of(document: tomlkit.TOMLDocument, table: Loc) -> tuple[Any, int]:
    """(container, index in its body) where the text of `table` starts: for `openai.accounts` in a
    file without an `[openai]` header that is the place of `openai` in the document."""
    while len(table) > 1:
        parent = lookup(document, table[:-1])
        if not (isinstance(parent, tomlkit.items.Table) and parent.is_super_table()):
            break
        table = table[:-1]
    holder = lookup(document, table[:-1]) if len(table) > 1 else document
    body = _container(holder).body
    return holder, next(i for i, (key, _) in enumerate(body) if key is not None and key.key == table[-1])


def _insert_items(parent: Any, place: int, items: list[Any]) -> None:
    """Put comments and blank lines at `place` of `parent`'s body (tomlkit has no public way to
    insert key-less items), keeping its index of keys right."""
    container = _container(parent)
    after_blank = place > 0 and _ends_blank(container.body[place - 1][1])
    while items and after_blank and isinstance(items[0], tomlkit.items.Whitespace):
        items = items[1:]  # no second blank line
    if not items:
        return
    container.body[place:place] = [(None, item) for item in items]
    index = container._map  # key -> position (a tuple when a key is written in several places)
    for key, where in index.items():
        if isinstance(where, tuple):
            index[key] = tuple(w + len(items) if w >= place else w for w in where)
        elif where >= place:
            index[key] = where + len(items)


_TRIVIA = (tomlkit.items.Comment, tomlkit.items.Whitespace)


# --- errors --------------------------------------------------------------------------------------


def attach_error(form: SectionForm, error: ConfigError) -> None:
    """Show the loader's line next to the field it names, else on its table, else above the form."""
    line = error.one_line()
    key = error.key
    while key:
        for form_field in form.fields():
            if form_field.key == key:
                form_field.error = line
                return
        for group in form.groups:
            if group.key == key:
                group.error = line
                return
        key = _parent_key(key)
    form.error = line


def _parent_key(key: str) -> str:
    """ "openai.accounts[0].api_key" -> "openai.accounts[0]" -> "openai.accounts" -> "openai"."""
    if key.endswith("]"):
        return key[: key.rindex("[")]
    return key.rpartition(".")[0]
