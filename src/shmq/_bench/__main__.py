"""`python -m shmq._bench [...]`: the same as `shmq bench [...]`."""
import sys

from . import main

sys.exit(main())
