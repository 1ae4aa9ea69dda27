#!/usr/bin/env bash
# Build the Debian package:
#   scripts/build-deb.sh [--no-lintian] [--out DIR] [--version VERSION] [amd64] [arm64]
#   -> DIR/didgw_<version>_<arch>.deb (DIR: dist) for each architecture named (default: both).
# --version builds the checkout's code under another version number than pyproject.toml's
# (package, wheel metadata and so `didgw --version` alike); it exists for the upgrade test,
# which needs a newer package of the same code. A release is built without it.
# Runs on an amd64 Debian 12 machine. Build time may use PyPI (pip download of the pinned
# runtime dependencies as CPython 3.11 manylinux wheels of the target architecture);
# installing and running the package downloads nothing. What goes where, and why the
# dependencies are installed here rather than by the package's postinst:
# docs/development.md, "The Debian package".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LINTIAN=1
DIST=dist
VERSION_SET=
archs=()
while [[ $# -gt 0 ]]; do
    arg=$1
    shift
    case $arg in
        --no-lintian) LINTIAN=0 ;;
        --out) DIST=${1:?--out needs a directory}; shift ;;
        --version) VERSION_SET=${1:?--version needs a version}; shift ;;
        amd64 | arm64) archs+=("$arg") ;;
        *) echo "usage: $0 [--no-lintian] [--out DIR] [--version VERSION] [amd64] [arm64] (unknown: $arg)" >&2; exit 2 ;;
    esac
done
[[ ${#archs[@]} -gt 0 ]] || archs=(amd64 arm64)

say() { printf '==> %s\n' "$*"; }
die() { echo "build-deb: $*" >&2; exit 1; }

command -v dpkg-deb >/dev/null || die "dpkg-deb is missing (apt-get install dpkg-dev)"
PY=${PYTHON:-$ROOT/.venv/bin/python}
[[ -x $PY ]] || die "no $PY: run scripts/setup.sh first"
VERSION=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
PYVER=3.11      # Debian 12's python3: the wheels' ABI, the venv's lib/python3.11
GLIBC_MINOR=36  # Debian 12's glibc 2.36: the newest manylinux tag its machines can load
WORK=$ROOT/build/deb
# Who builds it (Debian's DEBFULLNAME and DEBEMAIL, else git's user): the package's
# Maintainer field and its changelog's signature.
MAINTAINER="${DEBFULLNAME:-$(git config user.name || echo didgw)} <${DEBEMAIL:-$(git config user.email || true)}>"
[[ $MAINTAINER == *@*.*'>' ]] || die "set DEBEMAIL (and DEBFULLNAME): the package's maintainer address"
mkdir -p "$WORK" "$DIST"
DIST=$(cd "$DIST" && pwd)

# The project's own wheel (pure Python), once for every architecture. Under --version, from
# a copy of what the wheel is made of with that version written into its pyproject.toml.
src=.
if [[ -n $VERSION_SET ]]; then
    # Both a PEP 440 version and a Debian one, ordered alike: N.N.N, optionally +LOCAL.
    [[ $VERSION_SET =~ ^[0-9]+(\.[0-9]+)*(\+[0-9a-z]+(\.[0-9a-z]+)*)?$ ]] \
        || die "--version $VERSION_SET: expected digits and dots, optionally +local (e.g. 1.2.3+rebuild1)"
    src=$WORK/src
    rm -rf "$src" && mkdir -p "$src"
    cp -r gateway README.md "$src/"
    find "$src" -name __pycache__ -prune -exec rm -rf {} +
    sed "s/^version = \"$VERSION\"\$/version = \"$VERSION_SET\"/" pyproject.toml > "$src/pyproject.toml"
    grep -qx "version = \"$VERSION_SET\"" "$src/pyproject.toml" || die "no version line in pyproject.toml"
    VERSION=$VERSION_SET
fi
rm -rf "$WORK/self" && mkdir -p "$WORK/self"
"$PY" -m pip wheel -q --no-deps --disable-pip-version-check -w "$WORK/self" "$src" 2>&1 \
    | grep -v 'is ignored' || true
# The copy goes (a second README.md and gateway/ in the checkout would confuse its tools).
[[ $src == . ]] || rm -rf "$src"
self_whl=$(ls "$WORK"/self/didgw-"$VERSION"-*.whl) || die "no wheel of didgw $VERSION was built"

build_one() {
    local arch=$1 triplet machine cc strip cflags ldflags
    case $arch in
        amd64) triplet=x86_64-linux-gnu machine=x86_64 ;;
        arm64) triplet=aarch64-linux-gnu machine=aarch64 ;;
    esac
    # The machine's own compiler for its own architecture (a Pi builds arm64 natively), the
    # cross compiler for the other.
    if [[ $arch == "$(dpkg --print-architecture)" ]]; then cc=cc strip=strip
    else cc=$triplet-gcc strip=$triplet-strip
    fi
    command -v "$cc" >/dev/null || die "$cc is missing (apt-get install gcc-$triplet; the
arm64 headers and libraries: dpkg --add-architecture arm64; apt-get install
libc6-dev:arm64 libsodium-dev:arm64; scripts/setup.sh --dev does both)"
    local out=$WORK/$arch pkg=$WORK/$arch/pkg
    local venv=$pkg/opt/didgw/.venv
    local site=$venv/lib/python$PYVER/site-packages
    rm -rf "$out" && mkdir -p "$out/wheels" "$site" "$venv/bin"

    say "$arch: the pinned runtime dependencies as $machine wheels for CPython $PYVER"
    local plats=() v
    for v in $(seq 17 $GLIBC_MINOR); do plats+=(--platform "manylinux_2_${v}_$machine"); done
    local target=(--only-binary=:all: "${plats[@]}" --python-version "$PYVER" --implementation cp)
    "$PY" -m pip download -q --disable-pip-version-check "${target[@]}" -d "$out/wheels" \
        -c constraints.txt "$self_whl" 2>&1 | grep -v 'is ignored' || true
    ls "$out"/wheels/didgw-*.whl >/dev/null 2>&1 || die "$arch: pip download failed (above)"
    "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-compile "${target[@]}" \
        --target "$site" "$out"/wheels/*.whl 2>&1 | grep -v 'is ignored' || true
    [[ -d $site/gateway ]] || die "$arch: pip install --target failed (above)"
    # pip --target writes console scripts for the build machine's Python: ours are below.
    rm -rf "$site/bin"
    find "$site" -name __pycache__ -prune -exec rm -rf {} +
    # Nothing in site-packages is run as a program: everything there is 0644.
    find "$site" -type f -exec chmod 0644 {} +

    # A virtual environment made by hand: the layout `python3 -m venv` makes, over Debian's
    # python3, so the units and docs name the same /opt/didgw/.venv/bin/didgw as a checkout.
    printf 'home = /usr/bin\ninclude-system-site-packages = false\nversion = %s\n' "$PYVER" \
        > "$venv/pyvenv.cfg"
    ln -s /usr/bin/python3 "$venv/bin/python3"
    ln -s python3 "$venv/bin/python"
    # The console script as pip writes it, its guard included: the reading workers are
    # started with multiprocessing's spawn, which imports this file again in each worker (as
    # __mp_main__); without the guard each worker ran `didgw run` once more instead.
    printf '#!/opt/didgw/.venv/bin/python3\nimport sys\n\nfrom gateway.cli import main\n\nif __name__ == "__main__":\n    sys.exit(main())\n' \
        > "$venv/bin/didgw"
    chmod 0755 "$venv/bin/didgw"
    mkdir -p "$pkg/usr/bin"
    ln -s /opt/didgw/.venv/bin/didgw "$pkg/usr/bin/didgw"

    say "$arch: mosquitto's didgw plugin with $cc"
    local plugin_dir=/usr/lib/$triplet/didgw
    mkdir -p "$pkg$plugin_dir"
    cflags=$(DEB_HOST_ARCH=$arch dpkg-buildflags --get CFLAGS)
    ldflags=$(DEB_HOST_ARCH=$arch dpkg-buildflags --get LDFLAGS)
    CC=$cc CFLAGS=$cflags LDFLAGS=$ldflags scripts/build-broker-plugin.sh "$out/didgw_auth.so"
    "$strip" --strip-unneeded --remove-section=.comment --remove-section=.note \
        -o "$pkg$plugin_dir/didgw_auth.so" "$out/didgw_auth.so"

    say "$arch: configuration, units, maintainer scripts"
    mkdir -p "$pkg/etc/didgw" "$pkg/etc/mosquitto" "$pkg/lib/systemd/system/mosquitto.service.d" \
        "$pkg/usr/lib/sysusers.d" "$pkg/usr/lib/tmpfiles.d" "$pkg/usr/share/doc/didgw" \
        "$pkg/usr/share/lintian/overrides" "$pkg/DEBIAN"
    "$PY" -m gateway config example > "$out/gateway.toml.example"
    "$PY" scripts/deb/edit_conf.py gateway "$out/gateway.toml.example" > "$pkg/etc/didgw/gateway.toml"
    "$PY" scripts/deb/edit_conf.py mosquitto configs/mosquitto/mosquitto.conf \
        "/usr/lib/$triplet/mosquitto_dynamic_security.so" "$plugin_dir/didgw_auth.so" \
        > "$pkg/etc/mosquitto/didgw.conf"
    local unit
    for unit in didgw.service didgw-tls-renew.service didgw-tls-renew.timer \
        didgw-backup.service didgw-backup.timer; do  # the backup timer: shipped, off until enabled
        sed -e 's|file:/opt/didgw/README.md|file:/usr/share/doc/didgw/README.md|' \
            -e 's|file:/opt/didgw/docs/|file:/usr/share/doc/didgw/|' \
            "systemd/$unit" > "$pkg/lib/systemd/system/$unit"
    done
    install -m 0644 systemd/mosquitto.service.d/didgw.conf "$pkg/lib/systemd/system/mosquitto.service.d/didgw.conf"
    install -m 0644 systemd/didgw.sysusers "$pkg/usr/lib/sysusers.d/didgw.conf"
    install -m 0644 scripts/deb/tmpfiles.conf "$pkg/usr/lib/tmpfiles.d/didgw.conf"
    install -m 0644 README.md docs/operations.md "$pkg/usr/share/doc/didgw/"
    install -m 0644 scripts/deb/copyright "$pkg/usr/share/doc/didgw/copyright"
    printf 'didgw (%s) stable; urgency=medium\n\n  * Release %s: see /usr/share/doc/didgw/README.md.\n\n -- %s  %s\n' \
        "$VERSION" "$VERSION" "$MAINTAINER" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}")" \
        | gzip -9n > "$pkg/usr/share/doc/didgw/changelog.gz"
    install -m 0644 scripts/deb/lintian-overrides "$pkg/usr/share/lintian/overrides/didgw"
    local s
    for s in postinst prerm postrm; do install -m 0755 "scripts/deb/$s" "$pkg/DEBIAN/$s"; done
    (cd "$pkg" && find etc -type f | sed 's|^|/|' | sort) > "$pkg/DEBIAN/conffiles"
    local size
    size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
    sed -e "s/@VERSION@/$VERSION/" -e "s|@MAINTAINER@|$MAINTAINER|" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
        scripts/deb/control.in > "$pkg/DEBIAN/control"
    (cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
        | xargs -0 md5sum) > "$out/md5sums" && mv "$out/md5sums" "$pkg/DEBIAN/md5sums"
    find "$pkg" -type d -exec chmod 0755 {} +
    find "$pkg" -type f ! -perm -u+x -exec chmod 0644 {} +
    chmod 0644 "$pkg"/DEBIAN/{control,conffiles,md5sums}

    local deb=$DIST/didgw_${VERSION}_$arch.deb
    dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
    rm -rf "$pkg"  # the staging tree (its documents would look like the checkout's)
    say "built $deb ($(du -h "$deb" | cut -f1))"
    if [[ $LINTIAN -eq 1 ]]; then
        command -v lintian >/dev/null || die "lintian is missing (apt-get install lintian)"
        lintian --fail-on error,warning "$deb"
        say "$deb: lintian clean"
    fi
}

for arch in "${archs[@]}"; do build_one "$arch"; done
