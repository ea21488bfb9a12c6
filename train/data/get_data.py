"""``python -m train.data.get_data``: make Fashion-MNIST available, saying what was done (``make demo`` runs it).

1. Already there (``$REPA_DATA``, Debian's folder, or a previous download): nothing to do.
2. Debian or Ubuntu as root: ``apt-get install -y dataset-fashion-mnist`` (after ``apt-get update``
   when the package is unknown to the package lists).
3. Otherwise: torchvision's download into ``$REPA_CACHE/data`` when a mirror answers.
4. Else one line naming both ways, exit status 2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from train.errors import UserError
from train.data.fashion_mnist import DEBIAN_DIR, locate


def _found() -> str | None:
    try:
        return str(locate("train", download=False)[0].parent)
    except UserError:
        return None


def _apt_install() -> bool:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if subprocess.run(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], **quiet).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], **quiet)
        if subprocess.run(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], **quiet).returncode != 0:
            return False
    return DEBIAN_DIR.is_dir()


def main() -> int:
    if where := _found():
        print(f"Fashion-MNIST: found in {where}")
        return 0
    if _apt_install() and (where := _found()):
        print(f"Fashion-MNIST: installed Debian's package dataset-fashion-mnist ({where})")
        return 0
    try:
        images, _ = locate("train")  # downloads when online
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Fashion-MNIST: downloaded with torchvision into {images.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
