"""Convert an fp32 `rfm export` to RKNN (Rockchip RK3588-class NPUs) and check its parity in the toolkit's x86
simulator: int8 and int16 (calibrated on dataset frames) and float16.

Runs INSIDE the rknn-toolkit2 venv (tools/rknn_venv.sh), whose torch/onnx/numpy pins clash with rfm's, so it
imports nothing from rfm: it reads the export directory (export.json, policy.onnx, stats.json) and the feeds that
tools/rknn_feeds.py wrote with rfm's own venv:

    tools/rknn_venv.sh                                        # /tmp/rknn-venv
    .venv/bin/rfm export --checkpoint checkpoints/default --out /tmp/rknn/export
    .venv/bin/python tools/rknn_feeds.py /tmp/rknn/export DATASET /tmp/rknn/feeds.npz
    /tmp/rknn-venv/bin/python tools/rknn_check.py /tmp/rknn/export /tmp/rknn/feeds.npz --out /tmp/rknn/report.json

1. policy.onnx is prepared for the toolkit (prepare_onnx): RKNN needs static shapes (batch fixed to 1); its compiler
   aborts on uint8 tensors ("Not Support Dtype: 2"), so uint8 inputs become float32 holding the same 0..255
   values, and integer inputs (a continuation model's prefix_len) become float32 inputs cast back to their type
   inside the graph, so every input is fed as float32; its loader crashes on torch.diagonal's ConstantOfShape ->
   EyeLike pair ("'numpy.ndarray' object has no attribute 'data_type'"), so constants are folded with onnxruntime.
   The prepared graph is checked against the fp32 reference on onnxruntime.
2. Each precision is built: int8 (quantized_dtype w8a8) and int16 (w16a16i_dfp, 16-bit fixed point) with
   `build(do_quantization=True, dataset=...)` on the calibration frames, fp16 with do_quantization=False (the NPU
   runs unquantised models in float16). Each is built twice (--rules): with the toolkit's default graph rewrites,
   and without convert_rs_mul_rs_to_rs_gather_elements (below). A build is config(target_platform), load_onnx,
   build, export_rknn, accuracy_analysis on one held-out frame, init_runtime() without a target (the simulator)
   and inference on every held-out frame, in a child process: the toolkit's compiler aborts the process on errors.
3. The report gives, per build, parity against PyTorch fp32 (and onnxruntime fp32) in normalised action units and
   as % of each action dimension's range (rfm's int8 goal: the worst dimension's mean <= 2 %), which ops the
   compiler put on the NPU and which on the CPU (its op table), the toolkit's warnings and errors, and
   accuracy_analysis's per-layer cosines. It goes to --out (JSON); logs and .rknn files stay in --work.

The workaround: rknn-toolkit2 2.5.0's rewrite convert_rs_mul_rs_to_rs_gather_elements (Reshape -> Mul -> Reshape
into GatherElements) computes wrong values for the 6-D broadcast Mul of the triangulation token
(rfm.model.triangulate), at every precision. It is removed from the toolkit's rule table
(rknn.api.fuse_rules.convert_rules, a private dict). accuracy_analysis cannot see this: its float "golden" runs
the toolkit's rewritten graph, not the ONNX one.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import sys
import time
import traceback
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

PRECISIONS = {  # name -> build settings; quantized_dtype None: do_quantization=False
    "int8": {"quantized_dtype": "w8a8"},
    "int16": {"quantized_dtype": "w16a16i_dfp"},
    "fp16": {"quantized_dtype": None},
}
QUANT_GOAL_PCT = 2.0  # rfm.export.parity's int8 goal: mean |err| as % of range, worst action dimension
FP16_GOAL_MAX = 1e-2  # rfm.export.parity's fp16 goal: max |err| in normalised units
GATHER_RULE = "convert_rs_mul_rs_to_rs_gather_elements"
RULE_SETS = {"both": [[], [GATHER_RULE]], "default": [[]], "workaround": [[GATHER_RULE]]}
OP_ROW = re.compile(r"^D RKNN: \[[^\]]*\]\s+(\d+)\s+(\S+)\s+(\S+)\s+(NPU|CPU|GPU)\s.*\s(\S+:\S+)\s*$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def fail(msg: str) -> None:
    sys.exit(f"rknn_check: {msg}")


def prepare_onnx(export_dir: Path, out: Path) -> Path:
    """policy.onnx with batch 1, float32 inputs and constants folded (see the module docstring)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(export_dir / "policy.onnx"))
    integer = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    for value in model.graph.input:
        tensor = value.type.tensor_type
        if tensor.elem_type in integer:  # fed as float32, cast back to its type where the graph reads it
            inner = f"{value.name}__as_int"
            rename_input(model.graph, value.name, inner)
            model.graph.node.insert(0, onnx.helper.make_node("Cast", [value.name], [inner], to=tensor.elem_type))
            tensor.elem_type = onnx.TensorProto.FLOAT
    for value in [*model.graph.input, *model.graph.output]:
        tensor = value.type.tensor_type
        if tensor.elem_type == onnx.TensorProto.UINT8:
            tensor.elem_type = onnx.TensorProto.FLOAT  # the graph's Cast to float becomes a no-op, folded below
        for dim in tensor.shape.dim:
            if dim.dim_param:
                dim.ClearField("dim_param")
                dim.dim_value = 1
    del model.graph.value_info[:]  # stale dtypes/shapes; onnxruntime infers them again
    static = out.with_name("policy_static.onnx")
    onnx.save(model, str(static))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # folding; ONNX ops only
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(static), options, providers=["CPUExecutionProvider"])
    return out


def rename_input(graph, old: str, new: str) -> None:
    """Every node of `graph` and of its subgraphs (If/Loop bodies) that reads `old` reads `new` instead."""
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                rename_input(sub, old, new)


def write_calibration(feeds, names: list[str], work: Path) -> Path:
    """The toolkit's multi-input dataset file: one line per sample, one .npy per input, space separated."""
    folder = work / "calib"
    folder.mkdir(exist_ok=True)
    lines = []
    for i in range(len(feeds[f"calib/{names[0]}"])):
        paths = []
        for name in names:
            path = folder / f"{i:04d}_{name}.npy"
            np.save(path, feeds[f"calib/{name}"][i : i + 1].astype(np.float32))
            paths.append(str(path.resolve()))
        lines.append(" ".join(paths))
    dataset = work / "calib.txt"
    dataset.write_text("\n".join(lines) + "\n")
    return dataset


def build_and_run(spec: dict) -> None:
    """Child process: build one RKNN model and run it on the simulator; all it prints goes to spec["log"]."""
    fd = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(spec["work"])  # the toolkit writes its debug graphs (check*_*.onnx) into the working directory
    result: dict = {"ok": False, "stage": "import"}
    try:
        from rknn.api import RKNN

        if spec["disable_rules"]:
            import rknn.api.fuse_rules as rules

            missing = [r for r in spec["disable_rules"] if r not in rules.convert_rules]
            if missing:
                raise KeyError(f"{missing} not in this toolkit's rknn.api.fuse_rules.convert_rules")
            for name in spec["disable_rules"]:
                rules.convert_rules.pop(name)
        feeds = np.load(spec["feeds"])
        names = spec["inputs"]
        rknn = RKNN(verbose=True)

        def step(stage: str, ret) -> None:
            result["stage"] = stage
            if ret != 0:
                raise RuntimeError(f"{stage} returned {ret}")

        quantize = spec["quantized_dtype"] is not None
        settings = {"quantized_dtype": spec["quantized_dtype"]} if quantize else {}
        t0 = time.perf_counter()
        step("config", rknn.config(target_platform=spec["platform"], quantized_algorithm=spec["algorithm"],
                                   **settings))
        step("load_onnx", rknn.load_onnx(spec["onnx"]))
        step("build", rknn.build(do_quantization=quantize, dataset=spec["dataset"] if quantize else None,
                                 auto_hybrid=quantize and spec["auto_hybrid"]))
        result["build_s"] = round(time.perf_counter() - t0, 1)
        step("export_rknn", rknn.export_rknn(spec["rknn"]))
        held = [str(Path(spec["work"]) / f"held0_{n}.npy") for n in names]
        for path, name in zip(held, names):
            np.save(path, feeds[f"held/{name}"][:1].astype(np.float32))
        step("accuracy_analysis", rknn.accuracy_analysis(inputs=held, output_dir=spec["snapshot"]))
        step("init_runtime", rknn.init_runtime())
        result["stage"] = "inference"
        outs = []
        for i in range(len(feeds[f"held/{names[0]}"])):
            inputs = [feeds[f"held/{n}"][i : i + 1].astype(np.float32) for n in names]
            outs.append(rknn.inference(inputs=inputs, data_format=["nchw"] * len(names))[0])
        np.save(spec["actions"], np.concatenate(outs).astype(np.float32))
        rknn.release()
        result.update(ok=True, stage="done")
    except Exception as e:  # noqa: BLE001 - whatever the toolkit raises is reported; the traceback is in the log
        traceback.print_exc()
        result["error"] = f"{type(e).__name__}: {e}"
    sys.stdout.flush()
    Path(spec["result"]).write_text(json.dumps(result))


def op_placement(log: str) -> dict:
    """Where the compiler put each op: counts per target and per op type, and the ops left on the CPU."""
    rows = [m.groups() for m in map(OP_ROW.match, log.splitlines()) if m]
    rows = [r for r in rows if r[1] not in ("InputOperator", "OutputOperator")]
    by_type: dict[str, Counter] = {}
    for _, op, _, target, _ in rows:
        by_type.setdefault(op, Counter())[target] += 1
    return {
        "targets": dict(Counter(r[3] for r in rows)),
        "by_type": {op: dict(c) for op, c in sorted(by_type.items())},
        "cpu_ops": [f"{full} ({dtype})" for _, _, dtype, target, full in rows if target == "CPU"],
    }


def log_messages(log: str, level: str, limit: int = 40) -> list[str]:
    """Distinct warning ("W") or error ("E") lines of a build log, timestamps removed."""
    seen: dict[str, None] = {}
    for line in ANSI.sub("", log).splitlines():
        if line.startswith(f"{level} "):  # the toolkit's "W ..." and its compiler's "W RKNN: ..." lines
            seen[re.sub(r"\[\d\d:\d\d:\d\d\.\d+\] ", "", line).strip()] = None
    return list(seen)[:limit]


def accuracy_summary(snapshot: Path, output: str, worst: int = 8) -> dict | None:
    """accuracy_analysis's error_analysis.txt: the output's cosine (simulator vs the toolkit's float golden), and
    the layers with the lowest single-layer cosine."""
    path = snapshot / "error_analysis.txt"
    if not path.exists():
        return None
    rows = []
    number = r"([-\d.e+]+)"
    for line in path.read_text().splitlines():
        m = re.match(rf"^\[(\S+)\]\s+(\S+)\s+{number}\s*\|\s*{number}\s+{number}\s*\|\s*{number}", line)
        if m:
            op, name, cos, euc, single_cos, single_euc = m.groups()
            rows.append({"op": op, "name": name, "cos": float(cos), "euc": float(euc),
                         "single_cos": float(single_cos), "single_euc": float(single_euc)})
    return {
        "file": str(path),
        "layers": len(rows),
        "output": next((r for r in rows if r["name"] == output), rows[-1] if rows else None),
        "lowest_single_cos": sorted(rows, key=lambda r: r["single_cos"])[:worst],
    }


def action_norm(export_dir: Path, manifest: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """offset and scale (export.json), and each action dim's range in normalised units (stats.json's max - min,
    as rfm.export.parity)."""
    norm = manifest["normalization"]
    offset, scale = (np.asarray(norm[k], np.float32) for k in ("action_offset", "action_scale"))
    stats = json.loads((export_dir / "stats.json").read_text()).get("action") or {}
    if "min" in stats and "max" in stats:
        rng = np.asarray(stats["max"], np.float32).reshape(-1) - np.asarray(stats["min"], np.float32).reshape(-1)
        return offset, scale, np.maximum(rng / scale, 1e-6), "stats.json action max - min"
    return offset, scale, np.full(scale.shape, 2.0, np.float32), "assumed 2 normalised units (no action stats)"


def parity(out: np.ndarray, ref: np.ndarray, norm: tuple, precision: str | None = None) -> dict:
    """rfm.export.parity's metrics: errors in normalised units ((a - offset) / scale), % of each dim's range;
    with the goal of `precision` when given."""
    offset, scale, rng, _ = norm
    nout, nref = (out - offset) / scale, (ref - offset) / scale
    err = np.abs(nout - nref)  # (N, H, D_a)
    a, r = nout.reshape(len(out), -1), nref.reshape(len(ref), -1)
    cos = (a * r).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(r, axis=1), 1e-12)
    mean_pct = err.mean(axis=(0, 1)) / rng * 100
    report = {
        "samples": len(out),
        "max_abs_error": float(err.max()),
        "mean_abs_error": float(err.mean()),
        "cosine_similarity_mean": float(cos.mean()),
        "cosine_similarity_min": float(cos.min()),
        "mean_abs_error_pct_of_range": [round(float(v), 4) for v in mean_pct],
        "max_abs_error_pct_of_range": [round(float(v), 4) for v in err.max(axis=(0, 1)) / rng * 100],
        "mean_abs_error_pct_of_range_max": float(mean_pct.max()),
    }
    if precision == "fp16":
        report["goal"] = {"metric": "max_abs_error", "limit": FP16_GOAL_MAX,
                          "met": report["max_abs_error"] <= FP16_GOAL_MAX}
    elif precision:
        report["goal"] = {"metric": "mean_abs_error_pct_of_range_max", "limit": QUANT_GOAL_PCT,
                          "met": report["mean_abs_error_pct_of_range_max"] <= QUANT_GOAL_PCT}
    return report


def run_build(spec: dict) -> dict:
    """One build in a child process: its result, or why it died (the error lines of its log)."""
    Path(spec["result"]).unlink(missing_ok=True)
    child = multiprocessing.get_context("spawn").Process(target=build_and_run, args=(spec,))
    child.start()
    child.join()
    log = Path(spec["log"]).read_text(errors="replace") if Path(spec["log"]).exists() else ""
    if Path(spec["result"]).exists():
        result = json.loads(Path(spec["result"]).read_text())
    else:
        result = {"ok": False, "stage": "crashed", "error": f"child exited with code {child.exitcode}"}
    if not result["ok"]:
        result["error_lines"] = log_messages(log, "E", 10)
    result["warnings"] = log_messages(log, "W")
    result["ops"] = op_placement(log)
    librknnc = re.search(r"librknnc version: (.*)", log)
    result["librknnc"] = librknnc.group(1).strip() if librknnc else None
    result["log"] = spec["log"]
    return result


def check_prepared(prepared: Path, feeds, names: list[str]) -> dict:
    """The prepared graph on onnxruntime, one held-out frame at a time, against policy.onnx's outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"])
    ref = feeds["ref_onnx"]
    out = np.concatenate([
        session.run(None, {n: feeds[f"held/{n}"][i : i + 1].astype(np.float32) for n in names})[0]
        for i in range(len(ref))
    ])
    return {"file": str(prepared), "max_abs_diff_vs_policy_onnx_robot_units": float(np.abs(out - ref).max())}


def summary_line(build: dict) -> str:
    if not build["ok"]:
        return f"{build['tag']}: FAILED at {build['stage']}: {build.get('error')} {build['error_lines'][:3]}"
    pt = build["parity_vs_torch"]
    return (f"{build['tag']}: max |err| {pt['max_abs_error']:.3g}  mean |err| {pt['mean_abs_error']:.3g}  "
            f"worst dim mean {pt['mean_abs_error_pct_of_range_max']:.2f}% of range  cosine min "
            f"{pt['cosine_similarity_min']:.4f}  goal {'met' if pt['goal']['met'] else 'NOT met'}  "
            f"ops {build['ops']['targets']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export_dir", help="an fp32 `rfm export` directory")
    p.add_argument("feeds", help=".npz written by tools/rknn_feeds.py for this export")
    p.add_argument("--out", required=True, help="report JSON to write")
    p.add_argument("--work", help="build logs, calibration files, .rknn models (default: --out without .json)")
    p.add_argument("--platform", default="rk3588", help="RKNN target_platform (default rk3588)")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help=f"comma-separated, of {list(PRECISIONS)}")
    p.add_argument("--rules", choices=list(RULE_SETS), default="both",
                   help=f"the toolkit's default graph rewrites, without {GATHER_RULE} (workaround), or both")
    p.add_argument("--algorithm", default="normal", help="quantized_algorithm: normal | mmse | kl_divergence")
    p.add_argument("--auto-hybrid", action="store_true",
                   help="build(auto_hybrid=True): the toolkit keeps layers whose quantised output drifts in float")
    args = p.parse_args()

    try:
        toolkit = version("rknn-toolkit2")
    except PackageNotFoundError:
        fail(f"rknn-toolkit2 is not installed for {sys.executable}; build its venv with tools/rknn_venv.sh")
    unknown = [x for x in args.precisions.split(",") if x not in PRECISIONS]
    if unknown:
        fail(f"--precisions {unknown}: expected some of {list(PRECISIONS)}")
    export_dir = Path(args.export_dir)
    manifest = json.loads((export_dir / "export.json").read_text())
    if manifest.get("precision") != "fp32":
        fail(f"{export_dir}: precision {manifest.get('precision')!r}; RKNN quantises itself, export fp32")
    feeds = np.load(args.feeds)
    names = [i["name"] for i in manifest["inputs"]]
    missing = [n for n in names if f"calib/{n}" not in feeds or f"held/{n}" not in feeds]
    if missing:
        fail(f"{args.feeds}: no feeds for inputs {missing}; write them with tools/rknn_feeds.py for this export")
    work = (Path(args.work) if args.work else Path(args.out).with_suffix("")).resolve()  # builds chdir there
    work.mkdir(parents=True, exist_ok=True)
    norm = action_norm(export_dir, manifest)

    prepared = prepare_onnx(export_dir, work / "policy_rknn.onnx")
    prepared_check = check_prepared(prepared, feeds, names)
    dataset = write_calibration(feeds, names, work)
    builds = []
    for precision in args.precisions.split(","):
        for disabled in RULE_SETS[args.rules]:
            tag = precision + ("-workaround" if disabled else "")
            spec = {
                "platform": args.platform, "algorithm": args.algorithm, "auto_hybrid": args.auto_hybrid,
                **PRECISIONS[precision], "dataset": str(dataset), "onnx": str(prepared), "inputs": names,
                "feeds": str(Path(args.feeds).resolve()), "disable_rules": disabled, "work": str(work),
                **{k: str(work / f"{tag}{ext}") for k, ext in (
                    ("log", ".log"), ("result", ".result.json"), ("rknn", ".rknn"),
                    ("actions", ".actions.npy"), ("snapshot", ".snapshot"))},
            }
            print(f"building {tag} ...", flush=True)
            build = {"tag": tag, "precision": precision, **PRECISIONS[precision], "disabled_rules": disabled,
                     **run_build(spec)}
            if build["ok"]:
                out = np.load(spec["actions"])
                build["rknn_bytes"] = Path(spec["rknn"]).stat().st_size
                build["parity_vs_torch"] = parity(out, feeds["ref_torch"], norm, precision)
                build["parity_vs_onnxruntime"] = parity(out, feeds["ref_onnx"], norm)
                build["accuracy_analysis"] = accuracy_summary(Path(spec["snapshot"]), manifest["outputs"][0]["name"])
            builds.append(build)
            print(summary_line(build), flush=True)

    import onnx
    import onnxruntime as ort

    report = {
        "toolkit": {"rknn-toolkit2": toolkit, "librknnc": next((b["librknnc"] for b in builds if b["librknnc"]), None),
                    "python": sys.version.split()[0], "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "platform": args.platform,
        "runtime": "rknn-toolkit2 simulator on x86 (init_runtime() without a target)",
        "export_dir": str(export_dir),
        "feeds": {"file": args.feeds, **json.loads(str(feeds["meta"])),
                  "calibration_samples": len(feeds[f"calib/{names[0]}"]), "held_out_samples": len(feeds["ref_torch"])},
        "reference": "PyTorch fp32 eager on the same held-out frames (parity_vs_onnxruntime: onnxruntime fp32)",
        "units": "normalised action units ((action - offset) / scale, export.json's normalization)",
        "range_source": norm[3],
        "quantized_algorithm": args.algorithm,
        "auto_hybrid": args.auto_hybrid,
        "prepared_onnx": prepared_check,
        "builds": builds,
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
