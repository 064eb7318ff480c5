"""Write the real-text corpus ``blt study`` runs on: ``OUT/code/*.jsonl`` (Python stdlib sources) and
``OUT/prose/*.jsonl`` (/usr/share/doc, man pages), half each, documents of at most 8 KB, in a fixed order.

    python bench/study_corpus.py out/study-corpus --mb 8
    blt study --inputs 'out/study-corpus/*/*.jsonl' --output out/study-cpu --size cpu --no-ray
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from entropy import MAX_DOC, prose_files, read_text, stdlib_dir  # bench/entropy.py: the same corpus sources


def documents(paths: list[Path], limit: int, per_file: int) -> list[str]:
    docs, total = [], 0
    for path in paths:
        data = read_text(path)[:per_file]
        for start in range(0, len(data), MAX_DOC):
            docs.append(data[start : start + MAX_DOC].decode("utf-8", errors="replace"))
            total += len(docs[-1])
        if total >= limit:
            break
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output")
    parser.add_argument("--mb", type=float, default=8.0, help="corpus size (half code, half prose)")
    parser.add_argument("--docs-per-file", type=int, default=500)
    args = parser.parse_args()
    half = int(args.mb * 2**20 / 2)
    kinds = {"code": sorted(stdlib_dir().rglob("*.py")), "prose": prose_files()}
    for kind, paths in kinds.items():
        docs = documents(paths, half, per_file=half // 64)
        folder = Path(args.output) / kind
        folder.mkdir(parents=True, exist_ok=True)
        for part in range(0, len(docs), args.docs_per_file):
            lines = (json.dumps({"id": f"{kind}-{part + i}", "text": d}) for i, d in
                     enumerate(docs[part : part + args.docs_per_file]))
            (folder / f"part-{part // args.docs_per_file:04d}.jsonl").write_text("\n".join(lines) + "\n")
        print(f"{kind}: {len(docs)} documents, {sum(len(d) for d in docs) / 2**20:.2f} MB -> {folder}")


if __name__ == "__main__":
    main()
