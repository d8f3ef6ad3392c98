"""The command line (``fxnn``, ``python3 -m fxnn``, ``python3 fxnn.py``):
train CNNs whose conv layers are fixed 3x3 kernels plus a trainable 1x1.

Parses the flags and wires the parts together: data (``fxnn.data``), the
network and its engine (``fxnn.models``), the training loop and recording
(``fxnn.training``). ``main(argv)`` returns the process exit code.
"""
import argparse
import os
import sys
import time

# numpy's OpenBLAS (PyTensor's dense layers use it) keeps its threads spinning for a
# while after each call, which takes the cores from the C kernels that run next
# (docs/engines.md); let them sleep at once, unless the environment says otherwise.
# Read when numpy loads OpenBLAS, so set before the first import of numpy.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

from fxnn import __version__  # noqa: E402

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_WRITE_FAILED = 4
EXIT_CODES = {"complete": 0, "diverged": EXIT_DIVERGED, "interrupted": 130, "terminated": 143}
MAX_SEED = 2**32 - 1


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def probability(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def dataset_name(text):
    """A built-in dataset's name (any case) or an existing .npz path (data.dataset_arg)."""
    from fxnn.data import dataset_arg
    try:
        return dataset_arg(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def seed_value(text):
    """0..2**32-1: stored exactly in the record (MATLAB reads numbers as doubles)."""
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_SEED}, got {text}")
    return value


#: --threads may be at most this many per core: more only makes the pools contend (and 10,000 stall).
THREADS_PER_CORE = 4


def thread_count(text):
    """1 .. THREADS_PER_CORE x the cores this process may run on."""
    from fxnn.kernels.threads import cores
    value, most = positive_int(text), THREADS_PER_CORE * cores()
    if value > most:
        raise argparse.ArgumentTypeError(f"{value} is more than {THREADS_PER_CORE} per core of the {cores()} "
                                         f"cores this process may run on; use at most {most}")
    return value


def resnet_depth(text):
    """6n+2, n >= 1 (fxnn.models.resnet.check_depth)."""
    from fxnn.models.resnet import check_depth
    try:
        return check_depth(positive_int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


#: The networks of --arch (docs/resnet.md).
ARCHS = ("original", "resnet")
DEFAULT_DROPOUT = 0.25


def arch_problem(args, engine):
    """Fills in the flags whose default depends on --arch (-pdpo, --width,
    --depth); one line if a flag does not fit the architecture, else None."""
    from fxnn.models.resnet import DEFAULT_DEPTH, DEFAULT_WIDTH
    if args.arch == "original":
        given = [f"--{f}" for f in ("width", "depth") if hasattr(args, f)]
        if given:
            return f"{' and '.join(given)} size the residual network: add --arch resnet, or leave them out"
        args.dropout_prob = DEFAULT_DROPOUT if args.dropout_prob is None else args.dropout_prob
        return None
    if args.dropout_prob:
        return "--arch resnet has no dropout (BatchNorm follows each conv): leave out -pdpo, or give -pdpo 0"
    if args.filter_size != 3:
        return "--arch resnet's convolutions are 3x3: leave out -fsize"
    if engine == "pytensor":
        return "--arch resnet runs on the torch engine only: use --engine torch (pip install torch)"
    args.dropout_prob = 0.0
    args.width, args.depth = getattr(args, "width", DEFAULT_WIDTH), getattr(args, "depth", DEFAULT_DEPTH)
    return None


def odd_size(text):
    value = positive_int(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be odd (zero padding keeps the image size), got {text}")
    return value


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the empty ones (None, False); keeps the
    description's and examples' line breaks."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


EXAMPLES = """examples:
  python3 fxnn.py --model=fxnn                      MNIST, 100 records of 100 iterations
  python3 fxnn.py --model=cnn --seed 1              the generic CNN, reproducibly
  python3 fxnn.py -d CIFAR10 -nrec 1000 -ipr 250    a long CIFAR-10 sweep
  python3 fxnn.py -d CIFAR10 -nrec 1000 -ipr 250 --resume   continue it after Ctrl-C or a crash
  python3 fxnn.py -d FashionMNIST --valid-split 0.1 tune on a held-out split, test once at the end
  python3 fxnn.py -d mine.npz -m cnn                your own images and labels (docs/data.md)

exit codes: 0 done, 2 bad input or flags, 3 training diverged (NaN), 4 could not write (disk full),
130 Ctrl-C, 143 SIGTERM or SIGHUP"""


def program_name():
    """``fxnn.py`` when run as that script (the original's name, in usage and
    error lines), else ``fxnn`` (the console script, ``python3 -m fxnn``)."""
    return "fxnn.py" if os.path.basename(sys.argv[0] if sys.argv else "") == "fxnn.py" else "fxnn"


def build_parser():
    from fxnn.models.architecture import ABLATIONS, BASIS_MODELS, MODELS
    from fxnn.models.engines import DEVICES, ENGINES, PRECISIONS
    from fxnn.models.fxnn_paths import PATHS
    from fxnn.models.resnet import DEFAULT_DEPTH, DEFAULT_WIDTH
    from fxnn.models.optimizers import DEFAULT_LEARN_RATE, DEFAULT_OPTIMIZER, OPTIMIZERS
    from fxnn.training.recorder import RECORD_PARAMS

    p = argparse.ArgumentParser(
        prog=program_name(),
        description="Train a CNN whose conv layers are a fixed 3x3 stage (5 kernels per channel)\n"
                    "followed by a trainable 1x1 (model fxnn), a generic CNN (cnn) or logistic\n"
                    "regression (baseline), and record the curves to rec-<DATASET>-<MODEL>.mat.",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    p.add_argument("-m", "--model", choices=MODELS, default="fxnn", metavar="MODEL",
                   help="network to train: fxnn, cnn or baseline; or an ablation (docs/network.md): "
                        + ", ".join(ABLATIONS) + "; or fxnn over another fixed basis (docs/network.md): "
                        + ", ".join(BASIS_MODELS))
    p.add_argument("--arch", choices=ARCHS, default="original",
                   help="original: the original's two conv layers, pooling and three dense layers; resnet: a "
                        "CIFAR ResNet (He et al.) whose 3x3 convs are the model's, with BatchNorm (torch engine; "
                        "docs/resnet.md)")
    p.add_argument("--width", type=positive_int, default=argparse.SUPPRESS,
                   help=f"--arch resnet: channels of its first stage (then 2x, 4x) (default {DEFAULT_WIDTH})")
    p.add_argument("--depth", type=resnet_depth, default=argparse.SUPPRESS,
                   help=f"--arch resnet: layers, 6n+2 (default {DEFAULT_DEPTH}: ResNet-20)")
    p.add_argument("-d", "--dataset", default="MNIST", type=dataset_name, metavar="DATASET",
                   help="MNIST, FashionMNIST, CIFAR10, CIFAR100 (any case; downloaded into --data-dir when "
                        "missing) or your own data.npz (docs/data.md)")
    p.add_argument("--valid-split", type=probability, default=0.0, metavar="F",
                   help="validate on a fraction F of the training set held out (stratified, chosen by the "
                        "seed) and evaluate the test set once at the end; 0: validate on the test set")
    p.add_argument("-fsize", "--filter-size", type=odd_size, default=3, help="conv kernel size (cnn only)")
    p.add_argument("-bsize", "--batch-size", type=positive_int, default=64, help="training batch size")
    p.add_argument("-pdpo", "--dropout-prob", type=probability, default=None,
                   help=f"dropout probability after each conv layer (training only; default {DEFAULT_DROPOUT}; "
                        f"--arch resnet has none)")
    p.add_argument("-nrec", "--num-records", type=positive_int, default=100,
                   help="number of records (validation + snapshot after each)")
    p.add_argument("-ipr", "--iters-per-record", type=positive_int, default=100,
                   help="training iterations per record")
    p.add_argument("-lr", "--learn-rate", type=positive_float, default=DEFAULT_LEARN_RATE,
                   help="initial learn rate")
    p.add_argument("--conv-lr-scale", type=positive_float, default=1.0, metavar="S",
                   help="the conv layers train at S times the learn rate of the others (per-layer rates; "
                        "docs/results.md)")
    p.add_argument("-ld", "--learn-decay", type=positive_float, default=0.5,
                   help="learn rate decays exponentially to lr*ld by the last record")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULT_OPTIMIZER, help="update rule")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="auto: torch when installed (the faster engine on CPU and GPU), else pytensor "
                        "(see docs/engines.md)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="cuda needs the torch engine")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32: float32 throughout (as the original); bf16 (torch engine, CPU or CUDA GPU of "
                        "compute capability 8.0+): every layer's forward in bfloat16 autocast (convolutions, "
                        "fxnn layers and matmuls compute in bfloat16, accumulate in float32; cnn's dense convs "
                        "on channels_last tensors), training and validation alike, while the weights, "
                        "gradients, optimizer state, softmax and loss stay float32; the record's meta.precision "
                        "and meta.memory_format say what ran")
    p.add_argument("--fxnn-path", choices=PATHS, default="auto",
                   help="how fxnn layers compute (the same function): the fixed stage then the 1x1 GEMM; "
                        "fused, one kernel (CPU: C, float32; CUDA: Triton); or folded into one dense 3x3 conv; auto: each "
                        "layer's fastest, timed on first use and cached per machine (docs/paths.md)")
    p.add_argument("--seed", type=seed_value, default=None,
                   help="random seed; same seed, same engine: same numbers (default: a fresh one, "
                        "stored in the record's meta.seed)")
    p.add_argument("--data-dir", default=os.environ.get("FXNN_DATA", os.path.join("data", "image")),
                   help="folder holding mnist/, fashion-mnist/, cifar10/, cifar100/ (env FXNN_DATA)")
    p.add_argument("--no-download", action="store_true",
                   help="never download: MNIST falls back to the bundled sample, other datasets stop")
    p.add_argument("-o", "--out", default=None,
                   help="record file (default rec-<DATASET>-<MODEL>.mat; for data.npz, rec-data-<MODEL>.mat)")
    p.add_argument("--record-params", choices=RECORD_PARAMS, default="all",
                   help="parameter snapshots to record: at every record, the last only, or none")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run whose checkpoint sits beside the record file")
    p.add_argument("--force", action="store_true", help="overwrite an existing record file")
    p.add_argument("--threads", type=thread_count, default=None, metavar="N",
                   help="threads to compute on, in either engine (default: OMP_NUM_THREADS when set, else all cores)")
    p.add_argument("--tensorboard", metavar="DIR", default=None,
                   help="also log the curves, learn rate and flags to DIR for TensorBoard as the run goes "
                        "(needs: pip install 'fxnn[tensorboard]')")
    return p


def main(argv=None):
    from fxnn.files.signals import Terminated, raise_on_termination, restore_ctrl_c
    from fxnn.training import runlock
    args = build_parser().parse_args(argv)
    restore_ctrl_c()  # a run started with & from a script: Ctrl-C saves it (docs/never-lose-a-run.md)
    raise_on_termination()  # SIGTERM and SIGHUP save the run as Ctrl-C does
    try:
        return run(args)
    except (KeyboardInterrupt, Terminated) as e:  # before training started; during training the loop handles it
        stopped = "interrupted" if isinstance(e, KeyboardInterrupt) else "terminated"
        print(f"\n{stopped.capitalize()} before training started; nothing was recorded.", file=sys.stderr)
        return EXIT_CODES[stopped]
    finally:
        runlock.release_all()


def run(args):
    """One experiment from parsed flags; returns the exit code."""
    from fxnn.data import DataError, dataset_label, load_dataset
    from fxnn.data.split import hold_out
    from fxnn.files.atomic import WriteError
    from fxnn.kernels import threads
    from fxnn.models.architecture import build_network
    from fxnn.models.resnet import build_resnet
    from fxnn.models.engines import make_engine, resolve
    from fxnn.training import checkpoint, preflight, provenance, record_size, tensorboard_log
    from fxnn.training.final_test import final_test
    from fxnn.files.nofollow import UnsafePath, remove_folder
    from fxnn.training.loop import NUM_SAMPLES, VALID_BATCH, Schedule, Terminated, train
    from fxnn.training.memory import release_free_memory
    from fxnn.training.recorder import Recorder

    def fail(message):
        print(f"fxnn: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT

    out = args.out or f"rec-{dataset_label(args.dataset)}-{args.model}.mat"
    run_dir = out + ".run"
    problem = preflight.claim_output(out, run_dir, args.resume, args.force)
    if problem:
        return fail(problem)
    try:
        engine_name, device = resolve(args.engine, args.device, args.precision)
        resumed = checkpoint.load(run_dir) if args.resume else None
    except (ValueError, checkpoint.DamagedState) as e:
        return fail(e)
    problem = arch_problem(args, engine_name)
    if problem:
        return fail(problem)
    problem = args.tensorboard is not None and tensorboard_log.check(args.tensorboard, args.resume, args.force)
    if problem:
        return fail(problem)
    if args.threads:
        threads.use(args.threads, torch=engine_name == "torch")

    if resumed:
        seed = resumed.flags["seed"] if args.seed is None else args.seed
    else:
        seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    flags = dict(vars(args), engine=engine_name, device=device, seed=seed)
    problem = resumed and checkpoint.precision_mismatch(resumed.flags, args.precision, out, run_dir)
    if problem:
        return fail(problem)
    differ = checkpoint.mismatches(resumed.flags, flags) if resumed else []
    if differ:
        listed = ", ".join(f"--{k.replace('_', '-')} (run: {resumed.flags[k]}, now: {flags[k]})" for k in differ)
        return fail(f"cannot resume {out}: these flags differ from the interrupted run: {listed}")
    init_seed, batch_seed, engine_seed, split_seed = np.random.SeedSequence(seed).generate_state(4)

    print(f'Using dataset "{args.dataset}".', flush=True)
    try:
        dataset = load_dataset(args.dataset, args.data_dir, download=not args.no_download,
                               log=lambda line: print(line, flush=True))
        if args.valid_split:
            dataset = hold_out(dataset, args.valid_split, split_seed)
        if args.arch == "resnet":
            network = build_resnet(args.model, dataset.train_x.shape[1:], dataset.num_classes, args.width,
                                   args.depth, args.conv_lr_scale)
        else:
            network = build_network(args.model, dataset.train_x.shape[1:], dataset.num_classes, args.filter_size,
                                    args.conv_lr_scale)
    except (DataError, ValueError) as e:  # ValueError: images too small for the network
        return fail(e)
    flags["data"] = checkpoint.data_identity(dataset)
    problem = resumed and checkpoint.data_mismatch(resumed.flags, flags["data"], out)
    if problem:
        return fail(problem)

    print(f'Building model "{args.model}" ... ', end="", flush=True)
    problem = preflight.check_resources(network, args.batch_size, args.filter_size, args.model, device)
    if problem:
        print(flush=True)
        return fail(problem)
    params = network.init_params(np.random.default_rng(init_seed))
    try:
        engine = make_engine(engine_name, device, network, params, args.optimizer, args.dropout_prob,
                             int(engine_seed), args.fxnn_path, {"train": args.batch_size, "valid": VALID_BATCH},
                             precision=args.precision)
    except (ValueError, RuntimeError) as e:  # a path or FXNN_ISA this machine cannot run
        print(flush=True)
        return fail(e)
    print(" done.", flush=True)
    problem = preflight.check_disk(out, network.snapshot_shapes(), args.num_records, args.iters_per_record,
                                   args.record_params, resumed.record if resumed else 0)
    if problem:
        return fail(problem)
    size_note = record_size.warning(out, network.snapshot_shapes(), args.num_records, args.record_params)
    if size_note:
        print(size_note, flush=True)
    origin = provenance.collect(__version__, engine_name, device, network)

    if not resumed:  # the recorder and the checkpoint create it when they first write
        remove_folder(run_dir)
    recorder = Recorder(run_dir, network.snapshot_shapes(), dataset.test_x[:NUM_SAMPLES],
                        dataset.test_y[:NUM_SAMPLES], args.record_params,
                        track_best=bool(args.valid_split))
    sampler, start_record = np.random.default_rng(batch_seed), 0
    if resumed:
        sampler, start_record = resumed.sampler, resumed.record
        try:
            checkpoint.restore(resumed, engine, recorder)
        except checkpoint.DamagedState as e:
            return fail(e)
        print(f"Resuming at iteration {start_record * args.iters_per_record} from {run_dir}", flush=True)

    schedule = Schedule(args.num_records, args.iters_per_record, args.batch_size,
                        args.learn_rate, args.learn_decay)
    board = (args.tensorboard is not None
             and tensorboard_log.TensorBoardLog(args.tensorboard, recorder, schedule, flags, origin))

    def on_record(done):
        checkpoint.save(run_dir, done, engine.get_state(), sampler, recorder.state(), flags)
        if board:
            board.update(recorder)
        release_free_memory()

    try:
        outcome = train(engine, dataset, schedule, recorder, sampler, start_record, on_record,
                        print_line=lambda line: print(line, flush=True))
    except WriteError as e:
        return fail_write(e, run_dir)
    except UnsafePath as e:  # a link planted in the run folder while it ran
        return fail(e)
    if recorder.records == 0:  # stopped during the first validation: nothing to record or resume
        remove_folder(run_dir)
        print(f"{outcome.capitalize()} before the first record; nothing was recorded.", file=sys.stderr)
        return EXIT_CODES[outcome]
    test_vars, test_meta, test_line = ({}, {}, None)
    if args.valid_split and outcome == "complete":
        outcome, test_vars, test_meta, test_line = final_test(engine, dataset, recorder, args.iters_per_record)
    if board:
        board.close(recorder)
    paths, implementations = engine.describe_paths()
    meta = {
        "model": args.model, "basis": network.basis(), "dataset": dataset.name, **dataset.meta(), **test_meta,
        "data_sha256": flags["data"]["sha256"],
        "engine": engine_name, "device": device, "precision": args.precision,
        "memory_format": engine.describe_memory_formats(),
        "fxnn_path": paths, "fxnn_impl": implementations,
        "seed": seed, "status": outcome, "iterations_done": len(recorder.tloss),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "flags": {k: ("" if v is None else v) for k, v in vars(args).items()},
        **origin,
    }
    try:
        layout = recorder.save(out, meta, test_vars)
    except WriteError as e:
        return fail_write(e, run_dir)
    except UnsafePath as e:
        return fail(e)
    except (KeyboardInterrupt, Terminated) as e:
        stopped = "interrupted" if isinstance(e, KeyboardInterrupt) else "terminated"
        print(f"{stopped.capitalize()} while writing {out}: it was not written (an earlier file of that name "
              f"is untouched); run the same command with --resume to write it", file=sys.stderr)
        return EXIT_CODES[stopped]
    if test_line:
        print(test_line, flush=True)
    if outcome == "complete":
        remove_folder(run_dir)
        print(f"Saved recording to file {out}", flush=True)
    elif outcome == "diverged":
        print(f"fxnn: error: the training loss became {recorder.tloss[-1]} at iteration "
              f"{len(recorder.tloss)}; saved the record so far to {out}; try a smaller -lr", file=sys.stderr)
    else:
        then = ("continue with the same flags and --resume" if checkpoint.exists(run_dir)
                else "it stopped before its first checkpoint: run again to start over")
        print(f"{outcome.capitalize()}: saved the recording so far to file {out}; {then}", flush=True)
    if layout != "v5":
        print("(the record is MATLAB v7.3/HDF5: load it with load() in MATLAB or Octave, "
              "or h5py)", flush=True)
    return EXIT_CODES[outcome]


def fail_write(error, run_dir):
    """A record, snapshot or checkpoint that did not fit on the disk: one line,
    with how to go on (the last checkpoint and the earlier record are intact)."""
    from fxnn.training import checkpoint
    then = "then run the same command with --resume" if checkpoint.exists(run_dir) else "then run again"
    print(f"fxnn: error: {error.strerror}; {error.remedy}, {then}", file=sys.stderr)
    return EXIT_WRITE_FAILED


def cli():
    """Console-script entry point (``fxnn`` after ``pip install``)."""
    sys.exit(main())
