"""Item text recipes: how an item's fields become the one string a text encoder reads.

A recipe is a template with ``{field}`` placeholders. A part in square brackets is optional: it appears only
when every field it names is present and non-empty, so ``"{title}.[ Brand: {brand}.]"`` gives ``"Lamp."``
for an item without a brand, not ``"Lamp. Brand: ."``. Lists (Amazon's categories, a film's directors) are
flattened and joined with ``", "``, repeated entries dropped; whitespace runs (newlines included) collapse
to one space. ``[[`` and ``]]`` stand for literal brackets.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# The paper's recipe for Amazon: title + brand + category + description.
AMAZON_RECIPE = "[{title}.][ Brand: {brand}.][ Category: {categories}.][ {description}]"
# The recipe of ../shared/data/ml100k-mm's item_text.tsv (title, year, genres, IMDb plot, directors).
MOVIELENS_RECIPE = "{title} ({year}). Genres: {genres}.[ {description}][ Directed by {directors}.]"

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def render_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN
        return ""
    if isinstance(value, (list, tuple)):
        flat: list[str] = []
        stack = list(value)[::-1]
        while stack:
            item = stack.pop()
            if isinstance(item, (list, tuple)):
                stack.extend(list(item)[::-1])
            else:
                text = render_value(item)
                if text and text not in flat:
                    flat.append(text)
        return ", ".join(flat)
    return " ".join(str(value).split())


@dataclass(frozen=True)
class TextRecipe:
    template: str

    def __post_init__(self):
        self._parse()  # fail early on a bad template

    def _parse(self) -> list[tuple[bool, str]]:
        """[(optional, text)] in order."""
        text = self.template.replace("[[", "\x00").replace("]]", "\x01")
        parts, depth, current, optional = [], 0, "", False
        for char in text:
            if char == "[":
                if depth:
                    raise ValueError(f"text recipe {self.template!r}: nested '[' (expected flat optional parts)")
                parts.append((False, current))
                current, depth = "", 1
            elif char == "]":
                if not depth:
                    raise ValueError(f"text recipe {self.template!r}: ']' without '['")
                parts.append((True, current))
                current, depth = "", 0
            else:
                current += char
        if depth:
            raise ValueError(f"text recipe {self.template!r}: '[' not closed")
        parts.append((optional, current))
        return [(opt, t.replace("\x00", "[").replace("\x01", "]")) for opt, t in parts if t]

    @property
    def fields(self) -> list[str]:
        return list(dict.fromkeys(_FIELD.findall(self.template)))

    def render(self, item: dict) -> str:
        values = {name: render_value(item.get(name)) for name in self.fields}
        out = []
        for optional, text in self._parse():
            names = _FIELD.findall(text)
            if optional and not all(values[n] for n in names):
                continue
            out.append(_FIELD.sub(lambda m: values[m.group(1)], text))
        return " ".join("".join(out).split())
