import sys

from train.run.cli import main_train

sys.exit(main_train())
