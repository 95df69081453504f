"""`python -m bertfast ...` (also what torchrun starts: `torchrun --nproc_per_node=N -m bertfast finetune ...`)."""
import sys

from .cli import main

sys.exit(main())
