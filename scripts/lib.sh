# Shared helpers for the scripts in this folder. Sourced, not run.

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Installs the Debian packages given, skipping those already installed.
apt_install() {
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
  done
  if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Makes $1 a virtualenv with the pinned requirements file $2 installed, unless it already is
# one: a stamp in the venv holds the file's hash, and the modules named in $3 (comma-separated,
# as after `import`) must import. Needs Python 3.11 or later (rpds-py, psycopg).
ensure_venv() {
  local venv=$1 requirements=$2 imports=$3
  local stamp=$venv/requirements.sha256 wanted
  wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ] &&
    "$venv/bin/python" -c "import $imports" 2>/dev/null; then
    return 0
  fi
  command -v python3 >/dev/null || { echo "python3 is required for $venv" >&2; return 1; }
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { echo "$venv needs Python 3.11 or later, found $(python3 --version)" >&2; return 1; }
  # Debian's python3 has venv without ensurepip unless python3-venv is installed.
  if ! python3 -c 'import ensurepip' 2>/dev/null && command -v dpkg-query >/dev/null; then
    apt_install python3-venv
  fi
  say "creating $venv with $requirements"
  rm -f "$stamp"
  python3 -m venv --clear "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
  echo "$wanted" >"$stamp"
}
