import sys

from train.evaluation.evaluate import main

sys.exit(main())
