import sys

from train.data.datasets import encode_main

sys.exit(encode_main())
