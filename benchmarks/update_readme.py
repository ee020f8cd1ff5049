"""Copy the generated benchmark tables (benchmarks/results/*.md) into README.md between their markers.

    .venv/bin/python benchmarks/update_readme.py [NAME ...]   # e.g. anchors fewlabel; default: every table

README.md holds pairs of lines ``<!-- begin results/NAME.md -->`` / ``<!-- end results/NAME.md -->``;
everything between them is replaced by the file's current text, so no table in the README is typed by hand.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
PATTERN = re.compile(r"(<!-- begin (results/[\w.-]+\.md) -->\n)(.*?)(<!-- end \2 -->)", re.S)


def main(names: list[str]) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    found = [Path(m[1]).stem for m in PATTERN.findall(text)]
    unknown = sorted(set(names) - set(found))
    if unknown:
        raise SystemExit(f"README.md has no table named {', '.join(unknown)}; its tables: {', '.join(found)}.")

    def fill(match: re.Match) -> str:
        if names and Path(match.group(2)).stem not in names:
            return match.group(0)
        source = ROOT / "benchmarks" / match.group(2)
        body = source.read_text().strip() if source.exists() else f"*{match.group(2)} not generated yet*"
        body = re.sub(r"^(#{2,4}) ", r"##\1 ", body, flags=re.M)  # nest the tables' headings under the README's
        return f"{match.group(1)}{body}\n{match.group(4)}"

    new = PATTERN.sub(fill, text)
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(new)
    tmp.replace(readme)
    print(f"updated {len([n for n in found if not names or n in names])} of {len(found)} tables in {readme}")


if __name__ == "__main__":
    main(sys.argv[1:])
