import sys

from trainlab.cli import main


def _joined() -> bool:
    ddp = sys.modules.get("trainlab.parallel.ddp")  # not imported (nor torch) unless the command trained
    return ddp is not None and ddp.joined_group()


def _run() -> int:
    """main()'s exit status. A torchrun worker that joined a process group ends on every path through
    `trainlab.parallel.ddp.exit_process`: the interpreter's teardown would race the group's threads."""
    try:
        code = main()
    except BaseException as err:
        if not _joined():
            raise
        if isinstance(err, SystemExit):
            code = err.code if isinstance(err.code, int) else int(err.code is not None)
        elif isinstance(err, KeyboardInterrupt):
            code = 130
        else:
            sys.excepthook(type(err), err, err.__traceback__)  # the traceback Python would print
            code = 1
    if _joined():
        sys.modules["trainlab.parallel.ddp"].exit_process(code)
    return code


sys.exit(_run())
