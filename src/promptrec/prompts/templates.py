"""Prompt templates as data: a YAML file lists templates per task family (see ``p5.yaml``)."""

from __future__ import annotations

import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Mapping

import yaml

DEFAULT_TEMPLATES = "p5.yaml"


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class Template:
    family: str
    id: str
    input: str
    target: str
    seen: bool = True

    @property
    def fields(self) -> set[str]:
        return _fields(self.input) | _fields(self.target)

    def render(self, values: Mapping[str, str]) -> tuple[str, str]:
        """Fill the template; a field without a value is an error, never a silent blank."""
        missing = self.fields - values.keys()
        if missing:
            raise TemplateError(f"template {self.id!r} needs field(s) {sorted(missing)}")
        return self.input.format_map(values), self.target.format_map(values)

    def render_input(self, values: Mapping[str, str]) -> str:
        """Only the input text, for prediction, where the target is what is asked for."""
        missing = _fields(self.input) - values.keys()
        if missing:
            raise TemplateError(f"template {self.id!r} needs field(s) {sorted(missing)}")
        return self.input.format_map(values)


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


class TemplateSet:
    """All templates, grouped by family, with the seen/unseen split."""

    def __init__(self, templates: list[Template]) -> None:
        ids = [t.id for t in templates]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise TemplateError(f"duplicate template id(s): {sorted(dup)}")
        self.templates = templates

    @classmethod
    def load(cls, path: str | Path | None = None) -> "TemplateSet":
        """A template file: ``path``, or a set shipped with promptrec by name (``p5``, the
        default, or ``history_last``)."""
        name = DEFAULT_TEMPLATES if path is None else f"{path}.yaml"
        packaged = resources.files(__package__).joinpath(name)
        if path is None or (packaged.is_file() and not Path(path).exists()):
            text, source = packaged.read_text(), name
        else:
            text, source = Path(path).read_text(), str(path)
        raw = yaml.safe_load(text)
        if not isinstance(raw, dict):
            raise TemplateError(f"{source}: expected a mapping of family -> list of templates")
        templates = []
        for family, entries in raw.items():
            for entry in entries or []:
                unknown = set(entry) - {"id", "input", "target", "seen"}
                if unknown or not {"id", "input", "target"} <= set(entry):
                    raise TemplateError(
                        f"{source}: template {entry.get('id')!r} in {family!r} must have id, input, "
                        f"target and optionally seen; unexpected: {sorted(unknown)}"
                    )
                templates.append(Template(family=family, **entry))
        return cls(templates)

    def family(self, family: str, seen: bool | None = True) -> list[Template]:
        found = [t for t in self.templates if t.family == family and (seen is None or t.seen == seen)]
        if not found:
            raise TemplateError(f"no {'seen' if seen else 'unseen' if seen is False else ''} template for family {family!r}")
        return found

    def get(self, template_id: str) -> Template:
        for t in self.templates:
            if t.id == template_id:
                return t
        raise TemplateError(f"unknown template id {template_id!r}")

    def to_yaml(self) -> str:
        out: dict[str, list[dict]] = {}
        for t in self.templates:
            out.setdefault(t.family, []).append(
                {"id": t.id, "seen": t.seen, "input": t.input, "target": t.target}
            )
        return yaml.safe_dump(out, sort_keys=False, allow_unicode=True)
