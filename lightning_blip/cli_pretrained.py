"""``lightning_blip list-pretrained``: the released checkpoints and pretrained parts, by name."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from lightning_blip.weights.registry import list_pretrained


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="lightning_blip list-pretrained",
        description="Released BLIP / BLIP-2 checkpoints and the parts recipes start from; "
        "Model.from_pretrained('<name>') finds, downloads or names each.",
    )
    parser.add_argument(
        "contains", nargs="?", help="only entries whose name, model, task or format contain this"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per entry, for scripts")
    args = parser.parse_args(argv)
    entries = list_pretrained(args.contains)
    if args.json:
        print(json.dumps([asdict(e) for e in entries], indent=1))
        return
    rows = [("name", "model", "format", "task", "published", "source")]
    rows += [(e.name, e.model or "-", e.format, e.task, e.metric or "-", e.source) for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[5])
    unverified = sum(e.is_url and e.sha256 is None for e in entries)
    if unverified:
        print(f"\n{unverified} URL downloads are not checksum-verified (their publishers give no checksum).")
