"""The test set, evaluated once at the end of a run that validated on a
split held out of the training set: with the final parameters and with those
of the record of lowest validation error (``Recorder.best_params``)."""
import numpy as np

from .loop import Terminated, validate


def final_test(engine, dataset, recorder, iters_per_record):
    """(outcome, record variables, meta fields, console line) of the test-set
    results. Ctrl-C or SIGTERM during it gives outcome "interrupted" or
    "terminated" and no results; the checkpoint then resumes straight to
    this step. Leaves the engine with the best record's parameters."""
    try:
        final = validate(engine, dataset.test_x, dataset.test_y)
        engine.set_params(recorder.best_params)
        best = validate(engine, dataset.test_x, dataset.test_y)
    except KeyboardInterrupt:
        return "interrupted", {}, {}, None
    except Terminated:
        return "terminated", {}, {}, None
    iteration = recorder.best_record * iters_per_record
    variables = {"test_loss": np.array([final[0], best[0]]), "test_erate": np.array([final[1], best[1]])}
    line = (f"Test loss|erate {final[0]:8.6f}|{final[1] * 100:6.2f}% final parameters, "
            f"{best[0]:8.6f}|{best[1] * 100:6.2f}% best validation (iteration {iteration})")
    return "complete", variables, {"best_iteration": iteration}, line
