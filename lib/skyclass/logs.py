"""What a run prints: stage summaries, progress, and real warnings and errors; third-party chatter only with
``--verbose``. Entry points (the CLI, ``jobs/``) call :func:`configure_logging`; the training processes Horovod
starts call :func:`quiet_third_party_warnings` (they inherit ``SKYCLASS_VERBOSE``, not the driver's logging)."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

# Third-party loggers whose INFO lines speak to their own developers, not to a skyclass user: py4j logs a
# ConnectionResetError traceback at INFO when Spark's callback socket closes at the end of a run (not an error),
# Horovod's rendezvous server logs "scope global has keys ..." for every key exchange. --verbose shows them.
NOISY_LOGGERS = ("py4j", "urllib3", "matplotlib", "PIL", "horovod", "petastorm", "tensorflow", "absl")
_THIRD_PARTY_PACKAGES = tuple(f"{os.sep}{name}{os.sep}" for name in ("horovod", "petastorm", "py4j"))


def _not_third_party_info(record: logging.LogRecord) -> bool:
    """False for a third-party INFO/DEBUG record sent through the root logger (``logging.info(...)`` in Horovod's
    rendezvous server): a logger level cannot catch those, their logger is the root."""
    return record.levelno >= logging.WARNING or not any(p in record.pathname for p in _THIRD_PARTY_PACKAGES)


def configure_logging(verbose: bool = False) -> None:
    """Stage summaries, progress and real warnings; third-party chatter only with ``verbose``.

    ``verbose`` also sets ``SKYCLASS_VERBOSE=1``, which processes started for the run (Horovod's training
    processes) read to leave their own third-party output alone.
    """
    logging.basicConfig(level=os.environ.get("SKYCLASS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if verbose:
        os.environ["SKYCLASS_VERBOSE"] = "1"
        return
    # TensorFlow's C++ INFO lines (CPU feature notes) when the driver imports it; its warnings stay.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_third_party_info)
    quiet_third_party_warnings()


# Keras's note, on the tensorflow logger, that a callback took longer than a training step: it comes at the first
# steps of each fit (graph tracing, Horovod's broadcast and the warm-up callback), every process prints it, and
# there is nothing a user can do about it.
SLOW_CALLBACK_NOTE = "is slow compared to the batch time"


def _not_slow_callback_note(record: logging.LogRecord) -> bool:
    return SLOW_CALLBACK_NOTE not in str(record.msg)


def quiet_third_party_warnings() -> None:
    """Hide the deprecation warnings pyarrow 10 raises inside Petastorm 0.13 (once per dataset and row group, on
    the driver and in every training process): they concern Petastorm's use of pyarrow, nothing a user can
    change; and Keras's slow-callback note (:data:`SLOW_CALLBACK_NOTE`). Nothing else is filtered."""
    import warnings

    if os.environ.get("SKYCLASS_VERBOSE") == "1":
        return
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*pyarrow\.")
    warnings.filterwarnings("ignore", message="schema_fields behavior has changed")
    tensorflow = logging.getLogger("tensorflow")
    if _not_slow_callback_note not in tensorflow.filters:
        tensorflow.addFilter(_not_slow_callback_note)


class NativeOutput:
    """What native code (TensorFlow's C++ and MLIR, which write to file descriptors 1 and 2 themselves, past
    Python's logging) printed inside a :func:`native_output_captured` block."""

    def __init__(self) -> None:
        self.text = ""


@contextlib.contextmanager
def native_output_captured() -> Iterator[NativeOutput]:
    """Hold what native code writes to stdout/stderr during the block (the TensorFlow Lite converter's "Summary
    on the non-converted ops" and its C++ warnings) instead of letting it reach the user's terminal; the caller
    decides whether to show it (on failure). With ``SKYCLASS_VERBOSE=1`` nothing is held back."""
    held = NativeOutput()
    if os.environ.get("SKYCLASS_VERBOSE") == "1":
        yield held
        return
    import sys
    import tempfile

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield held
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            held.text = sink.read().decode("utf-8", errors="replace")
