#!/usr/bin/env bash
# A venv with nnU-Net v2 for the plan-and-preprocess comparison in run_all.py, beside (never inside)
# samunet's environment. It reuses the calling interpreter's packages (torch, numpy, SimpleITK...)
# through a .pth file, so only nnunetv2 and what it adds are installed.
#
#   bash benchmarks/make_nnunet_venv.sh [VENV_DIR] [PYTHON]     (defaults: benchmarks/.nnunet_venv, python3)
set -euo pipefail
VENV="${1:-$(dirname "$0")/.nnunet_venv}"
PY="${2:-python3}"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$PY" -m venv "$VENV"
VSITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$SITE" > "$VSITE/_samunet_host_packages.pth"
"$VENV/bin/pip" install -q nnunetv2
"$VENV/bin/python" -c "import nnunetv2, torch; print('nnunetv2 ready with torch', torch.__version__)"
