#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run it under Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES="xvfb xauth libgl1 libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 \
libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 \
libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1"
missing=$(dpkg-query -W -f='${Status} ${Package}\n' $SYSTEM_PACKAGES 2>/dev/null \
  | grep -v '^install ok installed' | awk '{print $NF}' || true)
if [ -n "$missing" ] || ! command -v xvfb-run >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $SYSTEM_PACKAGES
fi

PYTHON=${PYTHON:-python3}
# torch 2.13.0 is the local CPU build here; the project's range admits it without CUDA packages
$PYTHON -m pip install -q "torch==2.13.0" || $PYTHON -m pip install -q "torch>=2.2,<3"
$PYTHON -m pip install -q -e ".[testing]"

export QT_API=pyqt6 MPLBACKEND=Agg PYTHONUNBUFFERED=1
exec xvfb-run -a -s "-screen 0 1600x1200x24" $PYTHON -m pytest "$@"
