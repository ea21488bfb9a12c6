import sys

from train.cli import main_train

sys.exit(main_train())
