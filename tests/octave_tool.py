"""GNU Octave for the tests that check records with a real reader. Where it
is missing they skip with the reason, except in CI (CI=true; .ci/run installs
Octave), where a missing tool fails them instead of hiding them."""
import os
import shutil

import pytest


def require(tool, install):
    """The path of ``tool`` on PATH; else skip, or fail under CI=true."""
    path = shutil.which(tool)
    if path:
        return path
    message = f"{tool} is not installed (Debian: apt-get install {install})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}, and CI=true: .ci/run installs it, so CI must run these tests", pytrace=False)
    pytest.skip(message)


def octave_cli():
    """Octave's command-line program, which runs without a display."""
    return require("octave-cli", "octave")
