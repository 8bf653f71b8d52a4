"""rnnexp: a command-line experiment runner for recurrent networks."""
import os

# MKL rounds a matrix product by where its operands sit in memory unless Conditional Numerical Reproducibility
# is on; then a copy of a model trained among others (compare, seeds) would not train bit for bit as it does alone
# whenever its matrices are not 64-byte aligned (an odd hidden size). MKL reads this at its first product.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
STOPPED_WHILE_STARTING = "interrupted before it started; nothing was written"


def main() -> None:
    """The ``rnnexp`` command. Its libraries take a few tenths of a second to import: a Ctrl-C or SIGTERM
    before a command begins ends the process with one line (nothing has been written), not a traceback."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # started with it ignored (cmd & in a script): keep that
            signal.signal(signum, _stopped_while_starting)  # until the command's own handlers (cli.user_errors)
    from .cli import main as run

    run()


def _stopped_while_starting(signum: int, frame) -> None:
    import sys

    sys.stderr.write(STOPPED_WHILE_STARTING + "\n")
    sys.stderr.flush()
    os._exit(128 + signum)  # 130 for SIGINT, 143 for SIGTERM
