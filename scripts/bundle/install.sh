#!/bin/sh
# Install HIS Bridge from this bundle, with no network: a venv built from the wheels beside this script.
#
#   sudo ./install.sh                      # /opt/his-bridge, the his-bridge user, /etc/his-bridge, the systemd unit
#   ./install.sh --prefix DIR --no-system  # only the venv under DIR (tests, or a trial without touching the system)
#
# Each version gets its own venv under PREFIX/versions/VERSION and PREFIX/current points at the one in use, so an
# upgrade is "install the new bundle, restart" and a rollback is "point current back, restart" (docs/OPERATIONS.md).
set -eu

prefix=/opt/his-bridge
system=1
python=python3
force=0
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; echo "options: --prefix DIR  --no-system  --python PY  --force"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --no-system) system=0; shift ;;
        --python) python=$2; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

here=$(cd "$(dirname "$0")" && pwd)
version=$(cat "$here/VERSION")
want=$(cat "$here/PYTHON_VERSION")
have=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
if [ "$have" != "$want" ]; then
    echo "install.sh: this bundle is for Python $want; $python is ${have:-missing} (use --python /usr/bin/python$want)" >&2
    exit 2
fi
if [ "$system" = 1 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root, or with --prefix DIR --no-system" >&2
    exit 2
fi

dest="$prefix/versions/$version"
if [ -e "$dest" ]; then
    if [ "$force" != 1 ]; then
        echo "install.sh: $dest exists (version $version is installed); --force rebuilds it" >&2
        exit 2
    fi
    rm -rf "$dest"
fi
mkdir -p "$prefix/versions"
trap 'rm -rf "$dest"' EXIT
echo "install.sh: creating $dest (no network: wheels from $here/wheels)"
"$python" -m venv "$dest"
"$dest/bin/python" -m pip install --quiet --no-index --find-links "$here/wheels" --no-cache-dir \
    --disable-pip-version-check "his-bridge==$version"
"$dest/bin/his-bridge" --help >/dev/null

share="$dest/share/his-bridge"
mkdir -p "$share"
cp -R "$here/profiles" "$here/monitoring" "$share/"
cp "$here/bridge.example.toml" "$here/OPERATIONS.md" "$share/"
sed "s#/opt/his-bridge#$prefix#g" "$here/his-bridge.service" > "$share/his-bridge.service"
trap - EXIT

previous=$(readlink "$prefix/current" 2>/dev/null || true)
ln -sfn "versions/$version" "$prefix/current.new"
mv -T "$prefix/current.new" "$prefix/current"
echo "install.sh: $prefix/current -> versions/$version${previous:+ (was $previous)}"

if [ "$system" = 1 ]; then
    if ! id his-bridge >/dev/null 2>&1; then
        useradd --system --user-group --home-dir /var/lib/his-bridge --no-create-home \
            --shell /usr/sbin/nologin --comment "HIS Bridge agent" his-bridge
    fi
    install -d -m 0750 -o his-bridge -g his-bridge /var/lib/his-bridge
    install -d -m 0750 -o root -g his-bridge /etc/his-bridge
    install -m 0644 "$here/bridge.example.toml" /etc/his-bridge/bridge.example.toml
    install -m 0644 "$share/his-bridge.service" /etc/systemd/system/his-bridge.service
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable his-bridge.service >/dev/null 2>&1 || true
    fi
    if [ -f /etc/his-bridge/bridge.toml ]; then
        echo "install.sh: upgrade installed; switch to it with: systemctl restart his-bridge"
    else
        echo "install.sh: next: $prefix/current/bin/his-bridge init --hospital CODE --protocol soap|hl7|dbproc --endpoint ..."
    fi
fi
echo "install.sh: his-bridge $version installed"
