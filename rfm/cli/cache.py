"""`rfm cache`: list and prune the engine cache (`rfm serve`'s ONNX/OpenVINO exports and the graphs traced for them)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="list or prune the engine cache rfm serve exports checkpoints into")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("list", help="what the cache holds: engines (with their checkpoint), graphs, leftovers")
    prune = verbs.add_parser("prune", help="delete engines and graphs by last use, total size or a gone checkpoint "
                                           "(what a killed export left always goes)")
    for q in (ls, prune):
        q.add_argument("--engine-cache", default=None, metavar="DIR",
                       help="the cache (default $RFM_CACHE_DIR or ~/.cache/rfm/engines)")
        q.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    prune.add_argument("--unused-days", type=float, default=None, metavar="N",
                       help="delete what no server has loaded for N days")
    prune.add_argument("--max-gb", type=float, default=None, metavar="G",
                       help="then delete the least recently used until the cache takes at most G GB")
    prune.add_argument("--stale", action="store_true",
                       help="delete engines whose checkpoint is gone or now holds other weights (hashes each "
                            "checkpoint)")
    prune.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rfm.cli.main import CLIError
    from rfm.export.cache_contents import disk_usage, prune, scan
    from rfm.export.cache_dir import cache_root

    root = cache_root(args.engine_cache)
    if args.engine_cache and not root.is_dir():
        raise CLIError(f"--engine-cache {root}: not a directory")
    if args.verb == "list":
        entries = scan(root)
        total = disk_usage(entries)
        if args.json:
            print(json.dumps({"cache": str(root), "bytes": total, "entries": [e.describe() for e in entries]}))
            return 0
        print(f"{root}: {len(entries)} entries, {_size(total)} on disk (least recently used first)")
        for e in entries:
            d = e.describe()
            what = f"{d['checkpoint']} ({d['status']})" if e.kind == "engine" else ""
            print(f"  {d['last_used']}  {e.kind:<10}  {_size(e.bytes):>9}  {e.path.name}  {what}".rstrip())
        return 0
    if args.unused_days is None and args.max_gb is None and not args.stale:
        raise CLIError("prune: say what to delete: --unused-days N, --max-gb G and/or --stale "
                       "(`rfm cache list` shows what the cache holds)")
    for flag, value in (("--unused-days", args.unused_days), ("--max-gb", args.max_gb)):
        if value is not None and value < 0:
            raise CLIError(f"prune: {flag} {value}: expected a number ≥ 0")
    entries = scan(root, check_checkpoints=False)
    before = disk_usage(entries)
    rules = {"unused_days": args.unused_days, "max_bytes": None if args.max_gb is None else int(args.max_gb * 1e9),
             "stale": args.stale}
    kept: list = []
    removed = prune(root, **rules, dry_run=args.dry_run, refused=kept)
    gone = {e.path for e in removed}
    after = disk_usage([e for e in entries if e.path not in gone] if args.dry_run
                       else scan(root, check_checkpoints=False))
    if args.json:
        print(json.dumps({"cache": str(root), "dry_run": args.dry_run, "bytes_before": before, "bytes_after": after,
                          "removed": [e.describe() for e in removed], "kept": [e.describe() for e in kept]}))
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    for e in removed:
        print(f"{verb} {e.kind} {e.path.name}" + (f" ({e.checkpoint}: {e.status})" if e.status else ""))
    for e in kept:
        print(f"kept {e.kind} {e.path.name}: an export of it is running, or it could not be deleted (permissions)")
    print(f"{root}: {verb} {len(removed)} entries; {_size(before)} -> {_size(after)} on disk")
    return 0


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
