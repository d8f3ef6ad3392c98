#!/usr/bin/env python3
"""The short GPU check: on a machine with one CUDA GPU (H100-class), in under
8 minutes, the GPU tests, the essential GPU benchmark rows and a short whole
run, all written into one JSON file; fail-soft (a step that fails or runs out
of time records its exit code and the tail of its output, and the next step
runs).

Steps, each under ``timeout`` and within the whole check's time budget (the
measurements first, the tests with the time that is left):

  environment   nvidia-smi (device, driver), python, torch (its CUDA and cuDNN), triton, pycuda
  install       only where torch, triton or pytest does not import: pip install -e ".[test]"
                torch==2.13.0 (nothing else); where only fxnn does not (it imports from the checkout's
                root without an install): pip install --no-deps --no-build-isolation -e .
  gpu           torch.cuda.is_available(); without a GPU the check stops here, exit status 2
  layer         bench/bench_gpu.py at the issue's shapes (B,M,N,HxW) = (64,64,64,32x32),
                (64,32,64,14x14), (64,64,128,28x28): forward+backward of the fused Triton kernel,
                the fixed and folded paths and cuDNN's dense 3x3, bfloat16 and float32, channels_last
                and NCHW; summarised per shape and precision against the faster dense layout
  run           bench/bench_run.py --device cuda --precisions bf16: a short whole MNIST run
                (bundled sample), fxnn against cnn
  tests         pytest in one process (as -n 0; pytest.ini's addopts replaced, so it runs without
                pytest-xdist too), the slow tests left out: the tests that need CUDA (test_cuda_fused,
                test_cuda_engine, test_cuda_kernel, and the CUDA cases of test_torch_compile and
                test_provenance) and test_triton_fused (Triton's interpreter and ahead-of-time compiles)

    bench/gpu_check.sh [--out DIR]                      # the same, under a hard 8-minute timeout
    python3 bench/gpu_check.py [--out DIR] [--budget 460] [--skip tests,run]
    python3 bench/gpu_check.py --dry-run --out /tmp/x   # here, without a GPU: the CPU-side steps and the JSON

The JSON goes to DIR/gpu_check.json (DIR: --out, else $OUT, else
bench/results), rewritten after every step; the sub-benchmarks' own JSON
files lie beside it. ``--dry-run`` runs what needs no GPU in place of each
step (the CPU layer bench at one shape, a one-record CPU run, the benchmark
helpers' tests), to test the steps and the JSON's assembly. Exit status: 0
when every step passed, 1 when one failed, 2 when there is no GPU (and not
--dry-run). Runs as a script (it needs no fxnn import of its own), from any
directory.
"""
import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: (B, M, N, H=W): the issue's goal shapes, as in bench/bench_fixed_layer.py.
SHAPES = ["64,64,64,32", "64,32,64,14", "64,64,128,28"]
TESTS = ["tests/test_cuda_fused.py", "tests/test_cuda_engine.py", "tests/test_cuda_kernel.py",
         "tests/test_triton_fused.py", "tests/test_torch_compile.py", "tests/test_provenance.py"]
#: pytest -k for the files that also hold CPU tests: only their CUDA cases
TESTS_K = "cuda or gpu"
TAIL = 3000
STEPS = ("environment", "install", "gpu", "tests", "layer", "run")


def run_limited(cmd, limit, env):
    """(exit status, output) of ``cmd`` run from the checkout's root, its
    whole process group ended after ``limit`` seconds (status 124, as
    coreutils' timeout; children such as pytest's subprocesses included);
    (None, why) where it cannot start."""
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as e:
        return None, f"could not start: {e}"
    try:
        output, _ = proc.communicate(timeout=limit)
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        output = ""
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                output, _ = proc.communicate(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                output = ""
        return 124, (output or "") + f"\n[gpu_check: stopped after {limit} s]"


class Check:
    """The steps' records and the JSON file they are written to."""

    def __init__(self, out, budget, dry_run):
        self.out, self.budget, self.dry_run = out, budget, dry_run
        self.start = time.monotonic()
        self.report = {"check": "bench/gpu_check.py", "dry_run": dry_run, "budget_s": budget,
                       "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "host": platform.node(), "python": platform.python_version(), "steps": []}
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "gpu_check.json"
        self.write()

    def left(self):
        return self.budget - (time.monotonic() - self.start)

    def write(self):
        self.report["elapsed_s"] = round(time.monotonic() - self.start, 1)
        self.path.write_text(json.dumps(self.report, indent=2) + "\n")

    def step(self, name, cmd, timeout, env=None, required=True):
        """Run ``cmd`` (a list) under ``timeout`` seconds (less if the budget
        has less left), record it, and return its record; a step not
        ``required`` (a probe) does not fail the check."""
        limit = int(min(timeout, self.left()))
        shown = " ".join("<script>" if "\n" in c else c for c in cmd)
        record = {"step": name, "cmd": shown, "timeout_s": limit, "required": required}
        if limit < 5:
            record.update(rc=None, seconds=0, tail="skipped: the check's time budget is spent")
        else:
            began = time.monotonic()
            rc, output = run_limited(cmd, limit, {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
            record.update(rc=rc, tail=output[-TAIL:])
            record["seconds"] = round(time.monotonic() - began, 1)
            if record["rc"] in (124, 137):
                record["timed_out"] = True
        record["ok"] = record["rc"] == 0
        self.report["steps"].append(record)
        self.write()
        state = "ok" if record["ok"] else ("TIMED OUT" if record.get("timed_out") else f"FAILED (rc {record['rc']})")
        if not required and not record["ok"]:
            state = f"unavailable (rc {record['rc']}; a probe, not counted)"
        print(f"[{self.report['elapsed_s']:6.1f} s] {name}: {state} in {record['seconds']} s", flush=True)
        if not record["ok"]:
            print("  " + "\n  ".join(record["tail"].strip().splitlines()[-6:]), flush=True)
        return record

    def load(self, name):
        """A sub-benchmark's JSON from the output folder, or None."""
        try:
            return json.loads((self.out / name).read_text())
        except (OSError, ValueError):
            return None


PROBE = r"""
import json, platform
info = {"python": platform.python_version()}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version(),
                    devices=torch.cuda.device_count())
except Exception as e:
    info["torch_error"] = repr(e)
for name in ("triton", "pycuda", "pytest"):
    try:
        module = __import__(name)
        info[name] = getattr(module, "__version__", None) or getattr(module, "VERSION_TEXT", "present")
    except Exception as e:
        info[name + "_error"] = repr(e)[:300]
try:  # the installed package (the checkout's fxnn/ folder alone imports without its subpackages)
    import fxnn
    from fxnn.kernels import native
    info.update(fxnn=fxnn.__version__, fxnn_c_extension=native.module is not None)
except Exception as e:
    info["fxnn_error"] = repr(e)[:300]
print("PROBE " + json.dumps(info))
"""


def probe(check, name):
    record = check.step(name, [sys.executable, "-c", PROBE], 120, required=False)
    for line in record["tail"].splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[len("PROBE "):])
    return {}


def nvidia_smi(check):
    record = check.step("environment: nvidia-smi", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                                    "--format=csv,noheader"], 30, required=False)
    if record["ok"] and record["tail"].strip():
        name, driver, memory = (v.strip() for v in (record["tail"].strip().splitlines()[0].split(",") + ["", ""])[:3])
        return {"nvidia_smi_name": name, "driver": driver, "nvidia_smi_memory": memory}
    return {}


def layer_summary(data):
    """{shape: {precision: {...}}}: the fused Triton kernel (its faster layout)
    against the faster of cuDNN's NCHW and channels_last, and against cuDNN
    channels_last alone, from bench_gpu's JSON rows."""
    out = {}
    for r in (data or {}).get("layer", []):
        if "skipped" in r:
            continue
        key = f"{r['B']},{r['M']},{r['N']},{r['H']}x{r['W']}"
        cell = out.setdefault(key, {}).setdefault(r["precision"], {"dense_ms": {}, "fused_ms": {}})
        cell["dense_ms"][r["layout"]] = r["dense_ms"]
        cell["fused_ms"][r["layout"]] = r["fused_ms"]
    for shape in out.values():
        for cell in shape.values():
            best_dense = min(cell["dense_ms"], key=cell["dense_ms"].get)
            best_fused = min(cell["fused_ms"], key=cell["fused_ms"].get)
            cell.update(baseline=f"cuDNN {best_dense}", fused_layout=best_fused,
                        fused_over_best_dense=cell["fused_ms"][best_fused] / cell["dense_ms"][best_dense])
            if "channels_last" in cell["dense_ms"]:
                cell["fused_over_dense_channels_last"] = (cell["fused_ms"][best_fused]
                                                          / cell["dense_ms"]["channels_last"])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="output folder (default: $OUT, else bench/results)")
    p.add_argument("--budget", type=float, default=460, help="seconds for all steps together (default 460)")
    p.add_argument("--dry-run", action="store_true", help="no GPU needed: the CPU-side steps, to test the JSON")
    p.add_argument("--skip", default="", help=f"comma-separated steps to skip, of {', '.join(STEPS[3:])}")
    args = p.parse_args(argv)
    out = args.out or Path(os.environ.get("OUT") or ROOT / "bench" / "results")
    check = Check(out, args.budget, args.dry_run)
    skip = set(filter(None, args.skip.split(",")))
    py = sys.executable
    # pytest.ini's addopts has -n auto (pytest-xdist): replaced, so that the tests run in this
    # one process (as -n 0) whether or not xdist is installed, the slow ones still left out
    pytest_cmd = [py, "-m", "pytest", "-o", "addopts=", "-q", "-rs", "-m", "not slow", "-p", "no:cacheprovider"]
    print(f"gpu_check{' (dry run)' if args.dry_run else ''}: writing {check.path}", flush=True)

    env = nvidia_smi(check)
    env.update(probe(check, "environment: python packages"))
    check.report["environment"] = env
    check.write()
    # From the checkout's root fxnn imports without an install (fxnn/__init__.py); the C
    # extension is not needed on the GPU. Install only what is missing, and nothing beyond the test extra.
    if any(f"{name}_error" in env for name in ("torch", "triton", "pytest")):
        check.step("install", [py, "-m", "pip", "install", "-q", "-e", ".[test]", "torch==2.13.0"], 240)
    elif "fxnn_error" in env:
        check.step("install", [py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", "."],
                   180)
    if "install" in [s["step"] for s in check.report["steps"]]:
        env.update(probe(check, "environment: after install"))
        check.report["environment"] = env
        check.write()

    gpu = bool(env.get("cuda_available"))
    check.report["gpu"] = gpu
    if not gpu and not args.dry_run:
        check.report["result"] = "no CUDA GPU: torch.cuda.is_available() is False (or torch did not import)"
        check.write()
        print(f"gpu_check: no CUDA GPU here (torch.cuda.is_available() is False; torch "
              f"{env.get('torch', 'not importable')}, CUDA build {env.get('torch_cuda')}); "
              f"nothing measured, see {check.path}", flush=True)
        return 2

    if "layer" not in skip:
        if args.dry_run:
            check.step("layer (CPU stand-in)", [py, "-m", "bench.bench_fixed_layer", "--repeats", "1", "--passes",
                                                "forward", "--precisions", "fp32", "--json",
                                                str(out / "layer_cpu.json")], 120)
            check.report["layer_cpu"] = check.load("layer_cpu.json")
        else:
            check.step("layer", [py, "-m", "bench.bench_gpu", "--shapes", *SHAPES, "--precisions", "bfloat16",
                                 "float32", "--layouts", "channels_last", "nchw", "--warmup", "5", "--reps", "20",
                                 "--no-stage", "--json", str(out / "gpu_layer.json")], 180)
            data = check.load("gpu_layer.json")
            check.report["layer"] = data
            check.report["layer_summary"] = layer_summary(data)
        check.write()

    if "run" not in skip:
        flags = ["--", "-nrec", "2" if args.dry_run else "10", "-ipr", "10" if args.dry_run else "100",
                 "--no-download", "--record-params", "none", "--seed", "1"]
        device = [] if args.dry_run else ["--device", "cuda"]
        check.step("run", [py, "-m", "bench.bench_run", *device, "--precisions", "fp32" if args.dry_run else "bf16",
                           "--rounds", "1", "--no-machine", "--json", str(out / "run.json"), *flags], 120)
        check.report["run"] = check.load("run.json")
        check.write()

    if "tests" not in skip:
        if args.dry_run:
            check.step("tests", [*pytest_cmd, "tests/test_bench.py"],
                       120)
        else:
            check.step("tests", [*pytest_cmd, *TESTS[:4]], 200)
            check.step("tests: CUDA cases of mixed files", [*pytest_cmd, *TESTS[4:], "-k", TESTS_K],
                       60)

    failed = [s["step"] for s in check.report["steps"] if s["required"] and not s["ok"]]
    check.report["result"] = "every step passed" if not failed else f"failed: {', '.join(failed)}"
    check.write()
    print(f"gpu_check: {check.report['result']}; {check.report['elapsed_s']} s; wrote {check.path}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
