"""One experiment, top to bottom: the run's configuration built once from
the command line's flags and checked (:class:`RunConfig`), then :func:`run`:
:func:`prepare` (the record claimed, the checkpoint of ``--resume``, the data
from ``fxnn.data``, the network and its engine from ``fxnn.models``, the
recorder from ``fxnn.training``), :func:`train_job` and :func:`finish` (the
test set, the record, the closing lines). A check that fails raises
:class:`BadInput`: one line, exit code 2. The flags themselves are
:mod:`fxnn.cli`'s.
"""
import sys
import time
from dataclasses import dataclass, fields

import numpy as np

from fxnn import __version__

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_WRITE_FAILED = 4
EXIT_CODES = {"complete": 0, "diverged": EXIT_DIVERGED, "interrupted": 130, "terminated": 143}


class BadInput(Exception):
    """A flag, file or state a run cannot start from; the message is one line
    with the fix (exit code :data:`EXIT_BAD_INPUT`)."""


#: Flags of --arch resnet only, None for --arch original (and then left out of records).
RESNET_ONLY = ("width", "depth")


@dataclass(frozen=True)
class RunConfig:
    """One run's flags, checked together and built once (:meth:`from_args`):
    the parser's flags in its order (``width`` and ``depth`` last, as records
    have listed them), with the defaults that depend on --arch filled in,
    then the engine and device that ``auto`` resolved to."""
    model: str
    arch: str
    dataset: str
    valid_split: float
    filter_size: int
    batch_size: int
    dropout_prob: float
    num_records: int
    iters_per_record: int
    learn_rate: float
    conv_lr_scale: float
    kernel_init: str
    learn_decay: float
    optimizer: str
    engine: str            # as given: auto, pytensor or torch
    device: str            # as given: auto, cpu or cuda
    precision: str
    memory_format: str     # auto, nchw or channels_last (the torch engine)
    fxnn_path: str
    seed: int | None       # None: a fresh seed (or, resuming, the interrupted run's)
    data_dir: str
    no_download: bool
    out: str | None        # as given; the record's path is :attr:`record`
    record_params: str
    resume: bool
    force: bool
    threads: int | None
    tensorboard: str | None
    width: int | None      # --arch resnet only
    depth: int | None      # --arch resnet only
    resolved_engine: str   # the engine that runs: pytensor or torch
    resolved_device: str   # the device it runs on: cpu or cuda

    @classmethod
    def from_args(cls, args):
        """The configuration of parsed flags ``args``; :class:`BadInput` for
        an engine, device or precision this machine cannot run, flags that do
        not fit --arch, or an unusable --tensorboard folder."""
        from fxnn.models.engines import resolve
        from fxnn.training import tensorboard_log
        try:
            engine, device = resolve(args.engine, args.device, args.precision, args.memory_format)
        except ValueError as e:
            raise BadInput(e) from None
        flags = dict(vars(args), **arch_defaults(args, engine))
        problem = args.tensorboard is not None and tensorboard_log.check(args.tensorboard, args.resume, args.force)
        if problem:
            raise BadInput(problem)
        return cls(**flags, resolved_engine=engine, resolved_device=device)

    @property
    def record(self):
        """The record's path: -o, or rec-<DATASET>-<MODEL>.mat."""
        from fxnn.data import dataset_label
        return self.out or f"rec-{dataset_label(self.dataset)}-{self.model}.mat"

    @property
    def run_dir(self):
        """The folder of the run's checkpoint and snapshot spools, beside the record."""
        return self.record + ".run"

    def given(self):
        """{flag: value} of every flag as given (the resnet's only under
        --arch resnet), None where unset: a record's ``meta.flags``."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not f.name.startswith("resolved_") and not (f.name in RESNET_ONLY and self.arch == "original")}

    def run_flags(self, seed):
        """The flags as a checkpoint stores them and a resumed run must match
        (:data:`fxnn.training.checkpoint.MUST_MATCH`): the engine, device and
        seed resolved."""
        return dict(self.given(), engine=self.resolved_engine, device=self.resolved_device, seed=seed)


def arch_defaults(args, engine):
    """{-pdpo, --width, --depth: value} with the defaults that depend on
    --arch filled in; :class:`BadInput` if a flag does not fit the architecture."""
    from fxnn.models.hyperparameters import HYP
    given = getattr(args, "width", None), getattr(args, "depth", None)
    if args.arch == "original":
        named = [f"--{flag}" for flag, value in zip(RESNET_ONLY, given) if value is not None]
        if named:
            raise BadInput(f"{' and '.join(named)} size the residual network: add --arch resnet, or leave them out")
        return {"dropout_prob": HYP.dropout if args.dropout_prob is None else args.dropout_prob,
                "width": None, "depth": None}
    if args.kernel_init != "model":
        raise BadInput("--kernel-init is for --arch original (BatchNorm sets the resnet's scale): leave it out")
    if args.dropout_prob:
        raise BadInput("--arch resnet has no dropout (BatchNorm follows each conv): leave out -pdpo, or give -pdpo 0")
    if args.filter_size != 3:
        raise BadInput("--arch resnet's convolutions are 3x3: leave out -fsize")
    if engine == "pytensor":
        raise BadInput("--arch resnet runs on the torch engine only: use --engine torch (pip install torch)")
    width, depth = given
    return {"dropout_prob": 0.0, "width": HYP.resnet_width if width is None else width,
            "depth": HYP.resnet_depth if depth is None else depth}


def run(args):
    """One experiment from parsed flags: configure, prepare, train, finish;
    returns the exit code."""
    from fxnn.files.atomic import WriteError
    from fxnn.files.nofollow import UnsafePath
    try:
        config = RunConfig.from_args(args)
        job = prepare(config)
        outcome = train_job(job)
        return finish(job, outcome)
    except (BadInput, UnsafePath) as e:  # UnsafePath: a link planted in the run folder while it ran
        return fail(e)
    except WriteError as e:
        return fail_write(e, config.run_dir)


@dataclass
class Job:
    """A prepared run: what training and finishing it need."""
    config: RunConfig
    seed: int
    flags: dict            # RunConfig.run_flags and the data's identity: what the checkpoint stores
    dataset: object        # fxnn.data.dataset.Dataset
    network: object        # fxnn.models.architecture.Network or fxnn.models.resnet.ResNet
    engine: object         # fxnn.models.engines.Engine
    recorder: object       # fxnn.training.recorder.Recorder
    sampler: np.random.Generator  # draws the training batches
    start_record: int      # records done before this process (a resumed run's)
    schedule: object       # fxnn.training.loop.Schedule
    origin: dict           # the record's provenance (fxnn.training.provenance.collect)
    board: object = None   # fxnn.training.tensorboard_log.TensorBoardLog with --tensorboard


def prepare(config):
    """Everything the run needs, each part checked before training starts
    (:class:`BadInput`): the record claimed, the interrupted run's
    checkpoint (--resume), the data, the network and its engine, room for the
    records, the recorder and where training goes on."""
    from fxnn.kernels import threads
    from fxnn.training import provenance, tensorboard_log
    from fxnn.training.loop import Schedule
    resumed = claim(config)
    if config.threads:
        threads.use(config.threads, torch=config.resolved_engine == "torch")
    seed = run_seed(config, resumed)
    flags = config.run_flags(seed)
    check_resumable(config, resumed, flags)
    init_seed, batch_seed, engine_seed, split_seed = np.random.SeedSequence(seed).generate_state(4)

    dataset, network = load_data(config, split_seed)
    flags["data"] = data_identity(config, dataset, resumed)
    engine = build_engine(config, network, init_seed, engine_seed)
    check_room(config, network, resumed)
    origin = provenance.collect(__version__, config.resolved_engine, config.resolved_device, network)
    recorder, sampler, start_record = make_recorder(config, network, dataset, engine, resumed, batch_seed)
    schedule = Schedule(config.num_records, config.iters_per_record, config.batch_size, config.learn_rate,
                        config.learn_decay)
    try:
        board = (tensorboard_log.TensorBoardLog(config.tensorboard, recorder, schedule, flags, origin)
                 if config.tensorboard is not None else None)
    except OSError as e:  # what check() could not foresee: a folder the system will not let it make
        raise BadInput(f"--tensorboard {config.tensorboard}: cannot write the event files there "
                       f"({e.strerror or e}); give another folder") from None
    return Job(config, seed, flags, dataset, network, engine, recorder, sampler, start_record, schedule, origin,
               board)


def claim(config):
    """Claims the record (:func:`fxnn.training.preflight.claim_output`); the
    interrupted run's checkpoint with --resume, else None."""
    from fxnn.training import checkpoint, preflight
    problem = preflight.claim_output(config.record, config.run_dir, config.resume, config.force)
    if problem:
        raise BadInput(problem)
    try:
        return checkpoint.load(config.run_dir) if config.resume else None
    except checkpoint.DamagedState as e:
        raise BadInput(e) from None


def run_seed(config, resumed):
    """--seed; else the interrupted run's when resuming, or a fresh one."""
    if config.seed is not None:
        return config.seed
    return resumed.flags["seed"] if resumed else int(np.random.SeedSequence().entropy % 2**31)


def check_resumable(config, resumed, flags):
    """:class:`BadInput` if the interrupted run trained in another precision
    or with other flags."""
    from fxnn.training import checkpoint
    if not resumed:
        return
    problem = checkpoint.precision_mismatch(resumed.flags, config.precision, config.record, config.run_dir)
    if problem:
        raise BadInput(problem)
    differ = checkpoint.mismatches(resumed.flags, flags)
    if differ:
        listed = ", ".join(f"--{k.replace('_', '-')} (run: {resumed.flags[k]}, now: {flags[k]})" for k in differ)
        raise BadInput(f"cannot resume {config.record}: these flags differ from the interrupted run: {listed}")


def load_data(config, split_seed):
    """(dataset, network): the data (with --valid-split, a split held out by
    ``split_seed``) and the network sized for its images and classes."""
    from fxnn.data import DataError, load_dataset
    from fxnn.data.split import hold_out
    from fxnn.models.architecture import build_network
    from fxnn.models.resnet import build_resnet
    print(f'Using dataset "{config.dataset}".', flush=True)
    try:
        dataset = load_dataset(config.dataset, config.data_dir, download=not config.no_download,
                               log=lambda line: print(line, flush=True))
        if config.valid_split:
            dataset = hold_out(dataset, config.valid_split, split_seed)
        shape, classes = dataset.train_x.shape[1:], dataset.num_classes
        if config.arch == "resnet":
            network = build_resnet(config.model, shape, classes, config.width, config.depth, config.conv_lr_scale)
        else:
            network = build_network(config.model, shape, classes, config.filter_size, config.conv_lr_scale,
                                    config.kernel_init)
    except (DataError, ValueError) as e:  # ValueError: images too small for the network
        raise BadInput(e) from None
    return dataset, network


def data_identity(config, dataset, resumed):
    """The data's identity (:func:`fxnn.training.checkpoint.data_identity`);
    :class:`BadInput` if it is not the interrupted run's."""
    from fxnn.training import checkpoint
    identity = checkpoint.data_identity(dataset)
    problem = resumed and checkpoint.data_mismatch(resumed.flags, identity, config.record)
    if problem:
        raise BadInput(problem)
    return identity


def build_engine(config, network, init_seed, engine_seed):
    """The engine, training ``network`` from parameters drawn by ``init_seed``."""
    from fxnn.models.engines import make_engine
    from fxnn.models.hyperparameters import HYP
    from fxnn.training import preflight
    print(f'Building model "{config.model}" ... ', end="", flush=True)
    problem = preflight.check_resources(network, config.batch_size, config.filter_size, config.model,
                                        config.resolved_device, fxnn_path=config.fxnn_path)
    try:
        if problem:
            raise BadInput(problem)
        params = network.init_params(np.random.default_rng(init_seed))
        engine = make_engine(config.resolved_engine, config.resolved_device, network, params, config.optimizer,
                             config.dropout_prob, int(engine_seed), config.fxnn_path,
                             {"train": config.batch_size, "valid": HYP.valid_batch}, precision=config.precision,
                             memory_format=config.memory_format)
    except (ValueError, RuntimeError, BadInput) as e:  # a path or FXNN_ISA this machine cannot run
        print(flush=True)  # ends the line "Building model ..."
        raise BadInput(e) from None
    print(" done.", flush=True)
    return engine


def check_room(config, network, resumed):
    """:class:`BadInput` if the records would not fit on the disk; a note
    when the record will be large."""
    from fxnn.training import preflight, record_size
    shapes = network.snapshot_shapes()
    problem = preflight.check_disk(config.record, shapes, config.num_records, config.iters_per_record,
                                   config.record_params, resumed.record if resumed else 0)
    if problem:
        raise BadInput(problem)
    note = record_size.warning(config.record, shapes, config.num_records, config.record_params)
    if note:
        print(note, flush=True)


def make_recorder(config, network, dataset, engine, resumed, batch_seed):
    """(recorder, batch sampler, first record to train): fresh, or where the
    interrupted run's checkpoint left them (put into ``engine`` too)."""
    from fxnn.files.nofollow import remove_folder
    from fxnn.training import checkpoint
    from fxnn.training.loop import NUM_SAMPLES
    from fxnn.training.recorder import Recorder
    if not resumed:  # the recorder and the checkpoint create it when they first write
        remove_folder(config.run_dir)
    recorder = Recorder(config.run_dir, network.snapshot_shapes(), dataset.test_x[:NUM_SAMPLES],
                        dataset.test_y[:NUM_SAMPLES], config.record_params, track_best=bool(config.valid_split))
    if not resumed:
        return recorder, np.random.default_rng(batch_seed), 0
    try:
        checkpoint.restore(resumed, engine, recorder)
    except checkpoint.DamagedState as e:
        raise BadInput(e) from None
    print(f"Resuming at iteration {resumed.record * config.iters_per_record} from {config.run_dir}", flush=True)
    return recorder, resumed.sampler, resumed.record


def train_job(job):
    """Trains the prepared run, saving a checkpoint after each record; returns
    how it ended (:func:`fxnn.training.loop.train`)."""
    from fxnn.training import checkpoint
    from fxnn.training.loop import train
    from fxnn.training.memory import release_free_memory

    def on_record(done):
        checkpoint.save(job.config.run_dir, done, job.engine.get_state(), job.sampler, job.recorder.state(), job.flags)
        if job.board:
            job.board.update(job.recorder)
        release_free_memory()

    return train(job.engine, job.dataset, job.schedule, job.recorder, job.sampler, job.start_record, on_record,
                 print_line=lambda line: print(line, flush=True))


def finish(job, outcome):
    """After training: the test set once (--valid-split), the record written,
    the run folder removed when complete, and the lines saying how the run
    ended; returns the exit code."""
    from fxnn.files.nofollow import remove_folder
    from fxnn.files.signals import Terminated
    from fxnn.training import provenance
    from fxnn.training.final_test import final_test
    config, recorder = job.config, job.recorder
    if recorder.records == 0:  # stopped during the first validation: nothing to record or resume
        remove_folder(config.run_dir)
        print(f"{outcome.capitalize()} before the first record; nothing was recorded.", file=sys.stderr)
        return EXIT_CODES[outcome]
    test_vars, test_meta, test_line = {}, {}, None
    if config.valid_split and outcome == "complete":
        outcome, test_vars, test_meta, test_line = final_test(job.engine, job.dataset, recorder,
                                                              config.iters_per_record)
    if job.board:
        job.board.close(recorder)
    meta = {**provenance.what_ran(job.network, job.dataset, job.flags["data"], job.engine, config.resolved_device,
                                  config.precision),
            **test_meta, "seed": job.seed, "status": outcome, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "flags": {k: ("" if v is None else v) for k, v in config.given().items()}, **job.origin}
    try:
        layout = recorder.save(config.record, meta, test_vars)
    except (KeyboardInterrupt, Terminated) as e:
        stopped = "interrupted" if isinstance(e, KeyboardInterrupt) else "terminated"
        print(f"{stopped.capitalize()} while writing {config.record}: it was not written (an earlier file of that "
              f"name is untouched); run the same command with --resume to write it", file=sys.stderr)
        return EXIT_CODES[stopped]
    if test_line:
        print(test_line, flush=True)
    report_end(config, recorder, outcome, layout)
    return EXIT_CODES[outcome]


def report_end(config, recorder, outcome, layout):
    """The lines after the record is written: where it is and how to go on."""
    from fxnn.files.nofollow import remove_folder
    from fxnn.training import checkpoint
    out = config.record
    if outcome == "complete":
        remove_folder(config.run_dir)
        print(f"Saved recording to file {out}", flush=True)
    elif outcome == "diverged":
        print(f"fxnn: error: the training loss became {recorder.tloss[-1]} at iteration "
              f"{len(recorder.tloss)}; saved the record so far to {out}; try a smaller -lr", file=sys.stderr)
    else:
        then = ("continue with the same flags and --resume" if checkpoint.exists(config.run_dir)
                else "it stopped before its first checkpoint: run again to start over")
        print(f"{outcome.capitalize()}: saved the recording so far to file {out}; {then}", flush=True)
    if layout != "v5":
        print("(the record is MATLAB v7.3/HDF5: load it with load() in MATLAB or Octave, "
              "or h5py)", flush=True)


def fail(message):
    """The one line of a bad input, on stderr; its exit code."""
    print(f"fxnn: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def fail_write(error, run_dir):
    """A record, snapshot or checkpoint that did not fit on the disk: one line,
    with how to go on (the last checkpoint and the earlier record are intact)."""
    from fxnn.training import checkpoint
    then = "then run the same command with --resume" if checkpoint.exists(run_dir) else "then run again"
    print(f"fxnn: error: {error.strerror}; {error.remedy}, {then}", file=sys.stderr)
    return EXIT_WRITE_FAILED
