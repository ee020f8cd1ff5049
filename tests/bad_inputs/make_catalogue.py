"""Run every bad-input case and rewrite the table in ``tests/bad_inputs/README.md`` from what users actually get.

    .venv/bin/python tests/bad_inputs/make_catalogue.py            # rewrite the table, print the counts
    .venv/bin/python tests/bad_inputs/make_catalogue.py --check    # exit 1 if the table is out of date
    .venv/bin/python tests/bad_inputs/make_catalogue.py --check --subprocess  # CLI rows as real processes

The table sits between the ``<!-- catalogue -->`` markers; the text around it is kept. The counts
printed at the end (rows, CLI tracebacks, modified inputs, other problems) are the issue's targets.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
BEGIN, END = "<!-- catalogue -->", "<!-- /catalogue -->"


def cell(text: str) -> str:
    """Markdown table cell: pipes escaped, one line."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def uncell(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text.strip())


def known(case) -> str:
    return f"**known issue** ({cell(case.known)}): " if case.known else ""


def table(rows: list[tuple]) -> str:
    head = "| # | id | surface | bad input | what the user gets | checked by |\n|---|---|---|---|---|---|\n"
    return head + "".join(
        f"| {i} | `{c.id}` | {c.surface} | {c.input} | {known(c)}{cell(out.message)} | {c.test} |\n"
        for i, (c, out) in enumerate(rows, 1)
    )


def documented() -> dict[str, str]:
    """Case id -> message as written in README.md."""
    out = {}
    for line in README.read_text().splitlines():
        parts = re.split(r"(?<!\\)\|", line)
        if len(parts) == 8 and parts[2].strip().startswith("`"):
            out[parts[2].strip().strip("`")] = re.sub(r"^\*\*known issue\*\* \(.*?\): ", "", uncell(parts[5]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="do not write; fail if README.md differs")
    parser.add_argument(
        "--subprocess", action="store_true", help="run the CLI cases as real `biossl` processes (slower)"
    )
    parser.add_argument("--only", help="run only case ids containing this text (implies --check off, no write)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.subprocess:
        os.environ["BIOSSL_CATALOGUE_SUBPROCESS"] = "1"
    sys.path.insert(0, str(HERE))
    import warnings

    warnings.simplefilter("ignore")  # the message column is what the run prints as its error, not library noise
    from cases import CASES

    rows = []
    start = time.perf_counter()
    for case in CASES:
        if args.only and args.only not in case.id:
            continue
        with tempfile.TemporaryDirectory(prefix="biossl-case-") as tmp:
            out = case.run(Path(tmp))
        rows.append((case, out))
        flag = "ok " if not out.problems and all(n in out.message for n in case.needles) else "BAD"
        flag = "KNOWN" if case.known else flag
        print(f"{flag} {case.surface:6} {case.id:32} {out.message[:150]}")
        for problem in out.problems:
            print(f"      problem: {problem}")
    seconds = time.perf_counter() - start

    all_rows, rows = rows, [(c, o) for c, o in rows if not c.known]
    cli = [(c, o) for c, o in rows if c.surface == "CLI"]
    counts = {
        "rows": len(all_rows),
        "known issues (reported, strict xfail)": sum(bool(c.known) for c, _ in all_rows),
        "rows without known issues": len(rows),
        "errors (bad input refused)": sum(o.error for _, o in rows),
        "valid inputs accepted": sum(not o.error for _, o in rows),
        "CLI rows": len(cli),
        "CLI tracebacks": sum(any("traceback" in p for p in o.problems) for _, o in cli),
        "CLI exits other than 1": sum(any("exit code" in p for p in o.problems) for _, o in cli),
        "modified inputs": sum(
            any("modified" in p or "removed" in p or "was changed" in p for p in o.problems) for _, o in rows
        ),
        "partial outputs left": sum(any("left" in p for p in o.problems) for _, o in rows),
        "pickled payloads executed": sum(any("executed" in p for p in o.problems) for _, o in rows),
        "missing message words": sum(not all(n in o.message for n in c.needles) for c, o in rows),
        "rows with any problem": sum(bool(o.problems) for _, o in rows),
    }
    print(f"\n{len(all_rows)} cases in {seconds:.0f} s")
    for key, value in counts.items():
        print(f"  {key}: {value}")
    if args.only:
        return 1 if counts["rows with any problem"] else 0

    text = README.read_text()
    new = text.split(BEGIN)[0] + BEGIN + "\n" + table(all_rows) + END + text.split(END)[1]
    if args.check:
        if new != text:
            print("README.md is out of date: run tests/bad_inputs/make_catalogue.py")
            return 1
    else:
        README.write_text(new)
        print(f"wrote {README}")
    return 1 if counts["rows with any problem"] else 0


if __name__ == "__main__":
    sys.exit(main())
