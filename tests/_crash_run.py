"""`mmkt ...` with a simulated kill: the process exits abruptly (status 17) right after optimiser step
$MMKT_TEST_CRASH_AT_STEP of the first stage that reaches it, as a killed job would. The tests run this file in place of
`-m mmkt_lib.cli` (also under `accelerate launch`); the crash comes through the trainer's callbacks."""
import os
import sys

from mmkt_lib import trainer
from mmkt_lib.cli import main

STEP = int(os.environ['MMKT_TEST_CRASH_AT_STEP'])
_init = trainer.Trainer.__init__


def _init_with_crash(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.callbacks.append(lambda tr, state: os._exit(17) if state['step'] == STEP else None)


trainer.Trainer.__init__ = _init_with_crash
sys.exit(main(sys.argv[1:]))
