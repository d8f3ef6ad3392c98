"""The command line (``fxnn``, ``python3 -m fxnn``, ``python3 fxnn.py``):
train CNNs whose conv layers are fixed 3x3 kernels plus a trainable 1x1.

The flags (:func:`build_parser`, each checked as it is parsed) and the
process around a run (:func:`main`: Ctrl-C, SIGTERM, the exit code); the
run itself, from its configuration to its last line, is :mod:`fxnn.run`.
"""
import argparse
import os
import sys

# numpy's OpenBLAS (PyTensor's dense layers use it) keeps its threads spinning for a
# while after each call, which takes the cores from the C kernels that run next
# (docs/engines.md); let them sleep at once, unless the environment says otherwise.
# Read when numpy loads OpenBLAS, so set before the first import of numpy.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

from fxnn.run import EXIT_CODES, run  # noqa: E402

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


def record_path(text):
    """-o: not empty (what the path names is checked when the run claims it)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a file name, e.g. -o runs/rec-fxnn.mat")
    return text


def data_folder(text):
    """--data-dir: a folder (made when a download needs it), not a file."""
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a folder, e.g. --data-dir data/image")
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder (it holds mnist/, fashion-mnist/, "
                                         "cifar10/, cifar100/); for your own .npz use -d")
    return text


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
    from fxnn.models.architecture import ABLATIONS, BASIS_MODELS, KERNEL_INITS, MODELS
    from fxnn.models.engines import DEVICES, ENGINES, MEMORY_FORMATS, PRECISIONS
    from fxnn.models.fxnn_paths import PATHS
    from fxnn.models.hyperparameters import HYP
    from fxnn.models.optimizers import OPTIMIZERS
    from fxnn.training.recorder import RECORD_PARAMS

    p = argparse.ArgumentParser(
        prog=program_name(),
        description="Train a CNN whose conv layers are a fixed 3x3 stage (5 kernels per channel)\n"
                    "followed by a trainable 1x1 (model fxnn), a generic CNN (cnn) or logistic\n"
                    "regression (baseline), and record the curves to rec-<DATASET>-<MODEL>.mat.",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    what = p.add_argument_group("what to train")
    how = p.add_argument_group("how it trains")
    compute = p.add_argument_group("engine, device, precision and threads")
    files = p.add_argument_group("data, records and resuming")
    what.add_argument("-m", "--model", choices=MODELS, default="fxnn", metavar="MODEL",
                      help="network to train: fxnn, cnn or baseline; or an ablation (docs/network.md): "
                           + ", ".join(ABLATIONS) + "; or fxnn over another fixed basis (docs/network.md): "
                           + ", ".join(BASIS_MODELS))
    what.add_argument("--arch", choices=ARCHS, default="original",
                      help="original: the original's two conv layers, pooling and three dense layers; resnet: a "
                           "CIFAR ResNet (He et al.) whose 3x3 convs are the model's, with BatchNorm (torch engine; "
                           "docs/resnet.md)")
    what.add_argument("--width", type=positive_int, default=argparse.SUPPRESS,
                      help=f"--arch resnet: channels of its first stage (then 2x, 4x) (default {HYP.resnet_width})")
    what.add_argument("--depth", type=resnet_depth, default=argparse.SUPPRESS,
                      help=f"--arch resnet: layers, 6n+2 (default {HYP.resnet_depth}: ResNet-20)")
    what.add_argument("-d", "--dataset", default="MNIST", type=dataset_name, metavar="DATASET",
                      help="MNIST, FashionMNIST, CIFAR10, CIFAR100 (any case; downloaded into --data-dir when "
                           "missing) or your own data.npz (docs/data.md)")
    what.add_argument("--valid-split", type=probability, default=0.0, metavar="F",
                      help="validate on a fraction F of the training set held out (stratified, chosen by the "
                           "seed) and evaluate the test set once at the end; 0: validate on the test set")
    what.add_argument("-fsize", "--filter-size", type=odd_size, default=HYP.filter_size,
                      help="conv kernel size (cnn only)")
    how.add_argument("-bsize", "--batch-size", type=positive_int, default=HYP.batch_size, help="training batch size")
    how.add_argument("-pdpo", "--dropout-prob", type=probability, default=None,
                     help=f"dropout probability after each conv layer (training only; default {HYP.dropout}; "
                          f"--arch resnet has none)")
    how.add_argument("-nrec", "--num-records", type=positive_int, default=HYP.num_records,
                     help="number of records (validation + snapshot after each)")
    how.add_argument("-ipr", "--iters-per-record", type=positive_int, default=HYP.iters_per_record,
                     help="training iterations per record")
    how.add_argument("-lr", "--learn-rate", type=positive_float, default=HYP.learn_rate,
                     help="initial learn rate")
    how.add_argument("--conv-lr-scale", type=positive_float, default=HYP.conv_lr_scale, metavar="S",
                     help="the conv layers train at S times the learn rate of the others (per-layer rates; "
                          "docs/results.md)")
    how.add_argument("--kernel-init", choices=KERNEL_INITS, default="model",
                     help="model: each model's own initialisation; cnn or fxnn: the conv layers' initial effective 3x3 "
                          "kernels drawn by the model's rule, then scaled to the expected squared norm of cnn's or "
                          "fxnn's (docs/network.md)")
    how.add_argument("-ld", "--learn-decay", type=positive_float, default=HYP.learn_decay,
                     help="learn rate decays exponentially to lr*ld by the last record")
    how.add_argument("--optimizer", choices=OPTIMIZERS, default=HYP.optimizer, help="update rule")
    compute.add_argument("--engine", choices=ENGINES, default="auto",
                         help="auto: torch when installed (the faster engine on CPU and GPU), else pytensor "
                              "(see docs/engines.md)")
    compute.add_argument("--device", choices=DEVICES, default="auto", help="cuda needs the torch engine")
    compute.add_argument("--precision", choices=PRECISIONS, default="fp32",
                         help="fp32: float32 throughout (as the original); bf16 (torch engine, CPU or CUDA GPU of "
                              "compute capability 8.0+): every layer's forward in bfloat16 autocast (convolutions, "
                              "fxnn layers and matmuls compute in bfloat16, accumulate in float32; cnn's dense convs "
                              "on channels_last tensors), training and validation alike, while the weights, "
                              "gradients, optimizer state, softmax and loss stay float32; the record's meta.precision "
                              "and meta.memory_format say what ran")
    compute.add_argument("--memory-format", choices=tuple(MEMORY_FORMATS), default="auto",
                         help="how the torch engine lays out the conv layers' tensors: auto (channels_last under "
                              "--precision bf16, except fxnn layers held to the fused or fixed path; NCHW in fp32, "
                              "as the original's records), nchw, or channels_last (faster for the residual network "
                              "in fp32 too, where oneDNN's convolutions and fxnn's fused kernels take it as it lies; "
                              "docs/resnet.md)")
    compute.add_argument("--fxnn-path", choices=PATHS, default="auto",
                         help="how fxnn layers compute (the same function): the fixed stage then the 1x1 GEMM; "
                              "fused, one kernel (CPU: C, float32; CUDA: Triton); or folded into one dense 3x3 conv; "
                              "auto: each layer's fastest, timed on first use and cached per machine (docs/paths.md)")
    how.add_argument("--seed", type=seed_value, default=None,
                     help="random seed; same seed, same engine: same numbers (default: a fresh one, "
                          "stored in the record's meta.seed)")
    files.add_argument("--data-dir", type=data_folder,
                       default=os.environ.get("FXNN_DATA", os.path.join("data", "image")),
                       help="folder holding mnist/, fashion-mnist/, cifar10/, cifar100/ (env FXNN_DATA)")
    files.add_argument("--no-download", action="store_true",
                       help="never download: MNIST falls back to the bundled sample, other datasets stop")
    files.add_argument("-o", "--out", type=record_path, default=None,
                       help="record file (default rec-<DATASET>-<MODEL>.mat; for data.npz, rec-data-<MODEL>.mat)")
    files.add_argument("--record-params", choices=RECORD_PARAMS, default="all",
                       help="parameter snapshots to record: at every record, the last only, or none")
    files.add_argument("--resume", action="store_true",
                       help="continue the interrupted run whose checkpoint sits beside the record file")
    files.add_argument("--force", action="store_true", help="overwrite an existing record file")
    compute.add_argument("--threads", type=thread_count, default=None, metavar="N",
                         help="threads to compute on, in either engine (default: OMP_NUM_THREADS when set, else "
                              "all cores)")
    files.add_argument("--tensorboard", metavar="DIR", default=None,
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


def cli():
    """Console-script entry point (``fxnn`` after ``pip install``)."""
    sys.exit(main())
