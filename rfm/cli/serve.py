"""`rfm serve`: the batched inference server (FastAPI + uvicorn) for a checkpoint or ONNX export directory."""

from __future__ import annotations

import argparse
import errno
import logging
import os
from pathlib import Path

from rfm.cli.args import checkpoint_dir, positive_int
from rfm.constants import BACKENDS, ENGINES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a policy over HTTP/WebSocket (batched; openpi-compatible)",
                       description="Serve a checkpoint: POST /v1/act, WebSocket /v1/ws and /openpi, /metrics.")
    p.add_argument("--checkpoint", default=None, type=checkpoint_dir,
                   help="checkpoint (torch) or export (onnx) directory; default $RFM_CHECKPOINT or checkpoints/default")
    p.add_argument("--engine", default=None, choices=list(ENGINES),
                   help="how a checkpoint runs: auto (ONNX Runtime fp32 on a CPU, exported on first start and cached "
                        "by the weights' hash, PyTorch serving meanwhile; PyTorch on CUDA) | torch | onnx | onnx-int8 "
                        "| openvino | openvino-int8 (the OpenVINO IR of that export; default $RFM_ENGINE or auto). For an `rfm export` "
                        "directory only onnx | openvino apply (its precision was fixed when exporting), and "
                        "$RFM_ENGINE does not")
    p.add_argument("--engine-cache", default=None, metavar="DIR",
                   help="where --engine onnx*/openvino* keeps its exports (default $RFM_CACHE_DIR or "
                        "~/.cache/rfm/engines)")
    p.add_argument("--engine-cache-max-gb", type=float, default=10.0, metavar="G",
                   help="at start, delete the least recently used engines and graphs in --engine-cache until it "
                        "takes at most G GB (default 10; 0: no limit); this checkpoint's engines stay. "
                        "`rfm cache list|prune` does it by hand")
    p.add_argument("--backend", default=None, choices=list(BACKENDS),
                   help="what --checkpoint holds: torch (a checkpoint; runs on --engine) or an `rfm export` "
                        "directory (onnx, or openvino for its IR); default: detected from the directory (an export "
                        "made with --target openvino runs on OpenVINO; --engine onnx|openvino picks for an export)")
    p.add_argument("--device", default="auto", help="torch device: auto | cpu | cuda | cuda:N")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="largest batch; 1 turns batching off")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="longest a request waits for a batch to fill")
    p.add_argument("--batching", choices=("auto", "on", "off"), default="auto",
                   help="auto (default): batch requests across robots where the engine's warm-up shows a batch serves "
                        "them at least 1.5x as fast as one at a time (an accelerator; not ONNX Runtime on a CPU, where "
                        "a batch costs about its size in single runs); on: always; off: one request per run")
    p.add_argument("--queue-size", type=int, default=256, help="queued requests before 503 + Retry-After")
    p.add_argument("--max-connections", type=int, default=1024,
                   help="open WebSockets (one per robot) before new ones are answered 503 + Retry-After; HTTP "
                        "inference is bounded by --queue-size, and health probes and metrics always answer")
    p.add_argument("--root-path", default="", help="the path prefix a reverse proxy serves this server under "
                   "(e.g. /rfm), so /docs finds its schema behind it (docs/DEPLOYMENT.md)")
    p.add_argument("--forwarded-allow-ips", default=None,
                   help="addresses of the proxies whose X-Forwarded-For names the robot in the server's log (a "
                        "comma-separated list, or *); default $FORWARDED_ALLOW_IPS, else 127.0.0.1")
    p.add_argument("--timeout-ms", type=float, default=10_000.0, help="per-request deadline (504 past it)")
    p.add_argument("--min-deadline-ms", type=float, default=None,
                   help="shortest deadline_ms a request may carry (422 below it); default 5x one warm inference")
    p.add_argument("--api-key-file", default=None, help="file with one API key per line; enables auth")
    p.add_argument("--resize-images", action="store_true", help="resize wrong-size images instead of a 422")
    p.add_argument("--audit-log", default=None, help="JSON-lines audit log file")
    p.add_argument("--action-limits", default=None,
                   help="JSON action limits {min: [...], max: [...]}; default: the stats.json min/max (of the "
                        "checkpoint or export dir) with a margin")
    p.add_argument("--action-margin", type=float, default=0.1, help="margin on stats min/max (fraction of range)")
    p.add_argument("--openpi-mapping", default=None, help="JSON mapping of openpi keys to cameras/state/prompt")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="HTTP body and WebSocket message limit")
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads (default: all cores but one)")
    p.add_argument("--record", default=None, metavar="DIR",
                   help="record served observations and actions into this LeRobot v3.0 dataset (one episode per "
                        "robot session; appends if it exists)")
    p.add_argument("--record-images", default="video", choices=["video", "image"],
                   help="how --record stores camera frames: h264 video (compact) or lossless PNG (keeps targets of "
                        "a pixel or two, which 4:2:0 video blurs away; use it for small images)")
    p.add_argument("--record-vcodec", default=None, choices=["h264", "av1"],
                   help="video codec of --record-images video (default: an existing dataset's own codec, so its "
                        "info.json stays true; h264 for a new recording)")
    p.add_argument("--record-memory-mb", type=float, default=1024.0, metavar="MB",
                   help="open episodes' frames --record holds in memory; past it they go to a file in the recording "
                        "until their episode ends, and an episode is written at half of it")
    p.add_argument("--snap-instructions", type=float, default=None, metavar="SIM",
                   help="replace an instruction the model never trained on by the trained one nearest in meaning "
                        "when their sentence embeddings' cosine similarity is >= SIM (e.g. 0.5); below it the "
                        "instruction passes unchanged")
    p.add_argument("--calib-dataset", metavar="DATA",
                   help="for --engine onnx-int8 / openvino-int8: calibrate on this LeRobot dataset's frames (the "
                        "robot's own); without it int8 calibrates on synthetic frames, which can miss the parity bar "
                        "and is then refused")
    p.add_argument("--default-instruction", metavar="TEXT",
                   help="the task to run for a request that sends no instruction (an openpi client without a prompt, "
                        "a robot that does one job); without it such a request is a 422, unless the model was "
                        "trained on one instruction, which is then the default")
    p.add_argument("--prepare", action="store_true",
                   help="make the engine (export the checkpoint into --engine-cache unless it is cached there or in "
                        "$RFM_ENGINE_PATH), load it, run one request, print where it is and exit without serving: for "
                        "image builds and init containers, so every replica starts on it (the graphs traced to "
                        "export are not kept in the cache)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rfm.cli.main import CLIError
    from rfm.constants import STATS_FILE
    from rfm.runtime.manifest import EXPORT_FILE
    from serving.config import ServerConfig, default_checkpoint
    from serving.server import bind, serve

    ckpt = Path(args.checkpoint) if args.checkpoint else default_checkpoint()
    if not ckpt.is_dir():
        raise CLIError(f"checkpoint directory {ckpt} not found: pass --checkpoint DIR or set RFM_CHECKPOINT "
                       f"(train one with `rfm train`, or save one with RFMPolicy.build(...).save_pretrained(DIR))")
    for flag, path in (("--api-key-file", args.api_key_file), ("--action-limits", args.action_limits),
                       ("--openpi-mapping", args.openpi_mapping)):
        if path and not Path(path).is_file():
            raise CLIError(f"{flag} {path}: file not found")
    limit = int(args.max_body_mb * 1024 * 1024)
    config = ServerConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, batching=args.batching,
                          queue_size=args.queue_size,
                          timeout_ms=args.timeout_ms, resize_images=args.resize_images, max_body_bytes=limit,
                          max_ws_message_bytes=limit, api_keys_file=args.api_key_file, audit_log=args.audit_log,
                          action_limits=args.action_limits, action_limit_margin=args.action_margin,
                          openpi_mapping=args.openpi_mapping, record_dir=args.record,
                          record_images=args.record_images, record_vcodec=args.record_vcodec,
                          record_memory_mb=args.record_memory_mb,
                          snap_instructions=args.snap_instructions, default_instruction=args.default_instruction,
                          min_deadline_ms=args.min_deadline_ms, max_connections=args.max_connections,
                          root_path=args.root_path, forwarded_allow_ips=args.forwarded_allow_ips)
    if config.audit_log:  # fail now with the flag's name
        try:
            with open(config.audit_log, "a"):
                pass
        except OSError as e:
            raise CLIError(f"--audit-log {config.audit_log}: cannot write there ({e.strerror or e})") from None
    if config.api_keys_file:  # fail now, not in the server's start-up thread
        from serving.auth import ApiKeys

        ApiKeys.from_file(config.api_keys_file)
    is_export = (ckpt / EXPORT_FILE).is_file()
    # $RFM_ENGINE is a default for checkpoints; an export runs what it was made for unless --engine says otherwise
    backend = export_backend(ckpt, args.backend, args.engine or "auto") if is_export else (args.backend or "torch")
    if backend == "torch":  # fail now with the file's name, not in the server's start-up thread with a traceback
        from rfm.model.serialization import check_checkpoint

        check_checkpoint(ckpt)  # a CheckpointError is a ValueError: one line, exit code 2
    if args.record or args.openpi_mapping or args.action_limits:  # one line now, not a start-up thread's traceback
        _check_against_interface(args, ckpt, is_export)
    if args.prepare:
        return _prepare(args, ckpt, backend, is_export)
    try:  # before the model loads (and exports): a port in use is one line now, not a uvicorn error later
        sock = bind(args.host, args.port)
    except OSError as e:
        busy = "; is another server running on it? Choose another with --port" if e.errno == errno.EADDRINUSE else ""
        raise CLIError(f"--host {args.host} --port {args.port}: cannot listen there ({e.strerror or e}){busy}") from None
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.action_limits and not (ckpt / STATS_FILE).is_file():  # e.g. an export from an older rfm
        logging.getLogger("rfm.serving").warning("%s has no %s: serving WITHOUT action limits (pass "
                                                 "--action-limits, or export the checkpoint again)", ckpt, STATS_FILE)
    if backend == "torch" and args.engine_cache_max_gb > 0 and (args.engine or os.environ.get("RFM_ENGINE")) != "torch":
        _bound_engine_cache(args, ckpt)  # (a server on PyTorch adds nothing to the cache)
    loader = _runner_loader(args, ckpt, backend, is_export, staged=True)
    serve(loader, config, args.host, args.port, checkpoint=ckpt, log_level=args.log_level, sock=sock)
    return 0


def _bound_engine_cache(args: argparse.Namespace, ckpt: Path) -> None:
    """Keep the engine cache within --engine-cache-max-gb, least recently used first: every checkpoint a server
    starts on adds an engine, and nothing else removes one. This checkpoint's engines stay."""
    from rfm.export.cache_contents import prune
    from rfm.export.cache_dir import cache_root, checkpoint_key, searchable

    root = cache_root(args.engine_cache)
    if not searchable(root):
        return
    key = checkpoint_key(ckpt)[:16]
    try:  # (an engine another server loaded in the last 10 minutes stays: it may be loading it now)
        removed = prune(root, max_bytes=int(args.engine_cache_max_gb * 1e9), keep=root.glob(f"*-{key}*"),
                        min_age_s=600)
    except Exception as e:  # noqa: BLE001 - a read-only, vanishing or odd cache: serving matters more
        logging.getLogger("rfm.serving").warning("engine cache %s: could not prune it (%s)", root, e)
        return
    left = [e.path.name for e in removed if e.kind == "unfinished"]
    pruned = [e.path.name for e in removed if e.kind != "unfinished"]
    if left:
        logging.getLogger("rfm.serving").info("engine cache %s: deleted what killed exports left (%s)", root,
                                              ", ".join(left))
    if pruned:
        logging.getLogger("rfm.serving").info(
            "engine cache %s was over --engine-cache-max-gb %g: deleted the %d least recently used entries (%s)",
            root, args.engine_cache_max_gb, len(pruned), ", ".join(pruned))


def _runner_loader(args: argparse.Namespace, ckpt: Path, backend: str, is_export: bool, staged: bool):
    """The callable that loads what `rfm serve` runs (and sets the threads it runs on): a checkpoint on its engine
    (staged: a first start serves PyTorch while it exports), or an export on its runtime."""
    from rfm.cli.main import CLIError
    from rfm.export.engine import engine_loader
    from rfm.runtime.manifest import EXPORT_FILE
    from serving.server import runner_loader, set_threads

    threads = set_threads(args.threads)
    if backend == "torch":
        engine = args.engine or os.environ.get("RFM_ENGINE") or "auto"
        engine = "torch" if args.backend == "torch" and engine == "auto" else engine
        if args.calib_dataset and not engine.endswith("-int8"):
            raise CLIError(f"--calib-dataset calibrates an int8 engine (--engine onnx-int8 or openvino-int8), not "
                           f"--engine {engine}")
        if args.calib_dataset and not Path(args.calib_dataset).is_dir():
            raise CLIError(f"--calib-dataset {args.calib_dataset}: dataset directory not found")
        return engine_loader(ckpt, engine, staged=staged, device=args.device, threads=threads,
                             cache_dir=args.engine_cache, resize_images=args.resize_images,
                             calib_dataset=args.calib_dataset)
    if args.calib_dataset:
        raise CLIError(f"--calib-dataset: {ckpt} is an `rfm export` directory, calibrated when it was exported "
                       f"(export.json calibration); to calibrate on other frames, export again with "
                       f"`rfm export --precision int8 --calib-dataset {args.calib_dataset}`")
    if not is_export:
        raise CLIError(f"--backend {backend}: {ckpt} has no {EXPORT_FILE}; it is not an `rfm export` directory "
                       f"(serve a checkpoint with --backend torch, or export it with `rfm export`)")
    spin = {"allow_spinning": False} if backend == "onnx" else {}  # ONNX Runtime's idle spinning off
    return runner_loader(ckpt, backend, resize_images=args.resize_images, intra_op_threads=threads, **spin)


def _prepare(args: argparse.Namespace, ckpt: Path, backend: str, is_export: bool) -> int:
    """rfm serve --prepare: the engine the server would run, made and loaded once; one line saying what it is."""
    import json

    from rfm.cli.main import CLIError
    from rfm.export.cache_dir import cache_root
    from rfm.export.engine import EngineError

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        runner = _runner_loader(args, ckpt, backend, is_export, staged=False)()
    except EngineError as e:
        raise CLIError(str(e)) from None
    runner.warmup([1])
    info = runner.describe()
    root = cache_root(args.engine_cache)
    if info["engine_dir"] and Path(info["engine_dir"]).parent == root:  # an engine cache to ship keeps its engines,
        from rfm.export.graph_cache import remove_graphs  # (torch: only where a checkpoint was exported)

        remove_graphs(root)  # not the graphs traced to make them (a shipped cache it was found in is left alone)
    print(json.dumps({"checkpoint": str(ckpt), "engine": info["engine"], "engine_dir": info["engine_dir"]}))
    return 0


def _check_against_interface(args: argparse.Namespace, ckpt: Path, is_export: bool) -> None:
    """The files checked against the served robot before the model loads: --record DIR (new, empty, or a dataset
    recorded from this robot), --openpi-mapping (its cameras) and --action-limits (its actions). ValueError or
    FileNotFoundError naming the file: one line, exit code 2."""
    from rfm.runtime.limits import ActionLimits
    from rfm.runtime.loader import read_interface
    from rfm.runtime.recorder import check_recording_dir
    from serving.openpi import OpenpiMapping

    interface, _ = read_interface(ckpt, export=is_export)
    if args.record:
        check_recording_dir(args.record, interface)
    if args.openpi_mapping:
        OpenpiMapping.from_file(args.openpi_mapping, interface.cameras)
    if args.action_limits:
        ActionLimits.from_file(args.action_limits, interface.action_names)


def export_backend(export_dir: Path, backend: str | None, engine: str) -> str:
    """The runtime that serves an `rfm export` directory: --backend, else --engine, else the export's own target
    (OpenVINO for `--target openvino`, ONNX Runtime otherwise). Precision is fixed when exporting, so an --engine
    that asks for another one, or for an IR the export lacks, is an error that says what to do."""
    from rfm.cli.main import CLIError
    from rfm.runtime.manifest import read_manifest

    meta = read_manifest(export_dir)  # errors name the file
    has_ir, precision = bool(meta.get("openvino")), meta.get("precision", "fp32")
    if engine == "torch":
        raise CLIError(f"--engine torch: {export_dir} is an `rfm export` directory (ONNX); serve the checkpoint it "
                       f"came from ({meta.get('checkpoint', 'export.json checkpoint')}) for PyTorch")
    wanted = None if engine == "auto" else ("openvino" if engine.startswith("openvino") else "onnx")
    if backend and wanted and backend != wanted:
        raise CLIError(f"--backend {backend} and --engine {engine} disagree: give one of them")
    chosen = backend or wanted or ("openvino" if has_ir and meta.get("target") == "openvino" else "onnx")
    if engine.endswith("-int8") and precision != "int8":
        raise CLIError(f"--engine {engine}: {export_dir} is a {precision} export; int8 is chosen when exporting "
                       f"(rfm export --precision int8), or serve the checkpoint itself with --engine {engine}")
    if chosen == "openvino" and not has_ir:
        raise CLIError(f"{'--backend' if backend else '--engine'} {backend or engine}: {export_dir} has no OpenVINO "
                       f"IR (export.json openvino); export with `rfm export --target openvino`")
    return chosen
