#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install a pinned requirements file into it.
# Usage: scripts/setup-venv.sh VENV_DIR REQUIREMENTS_FILE
# Re-installs only when the requirements file changed since the last install.
set -euo pipefail
venv_dir=$1
requirements=$2
python=${PYTHON:-python3}

if [ ! -x "$venv_dir/bin/python" ]; then
  if ! "$python" -m venv "$venv_dir" 2>/dev/null; then
    # Debian ships venv support separately (python3-venv).
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      rm -rf "$venv_dir"
      "$python" -m venv "$venv_dir"
    else
      echo "error: '$python -m venv' failed; install python3-venv (sudo apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
fi

stamp="$venv_dir/.installed-$(basename "$requirements")"
wanted=$(cat "$requirements" requirements.txt 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  log="$venv_dir/pip-install.log"
  if ! "$venv_dir/bin/python" -m pip install --disable-pip-version-check -r "$requirements" >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
  fi
  echo "$wanted" > "$stamp"
fi
