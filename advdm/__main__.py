import os
import sys

from .cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # A torchrun rank has written and recorded its work and left its process group by now. Skip
    # the interpreter's teardown: a gloo worker thread still releasing the last collective's
    # tensors then needs the GIL of a finalizing interpreter, and that aborts the process
    # ("terminate called without an active exception"), which torchrun reports as a failed
    # batch (a known PyTorch teardown race, pytorch/pytorch#179291).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
