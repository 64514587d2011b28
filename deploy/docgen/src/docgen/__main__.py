"""`python -m docgen [--out docs]`: write the documents (what `make docs` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from docgen.documents import write_documents


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="docgen", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs"), help="the output folder")
    args = parser.parse_args(argv)
    for path in write_documents(args.out):
        print(path)


if __name__ == "__main__":
    main()
