#!/bin/sh
# System packages qmml's free DFT engines need: CP2K (cp2k_shell + GTH/MOLOPT data in
# /usr/share/cp2k) and Quantum ESPRESSO (pw.x, ld1.x). Debian/Ubuntu, as root, via apt-get.
# Where that is impossible (no root, no apt-get, no network) it says why and continues:
# the tests that need these programs are then skipped with the reason.
PACKAGES="cp2k cp2k-data quantum-espresso"

missing=""
for program in cp2k_shell pw.x; do
    command -v "$program" >/dev/null 2>&1 || missing="$missing $program"
done
if [ -z "$missing" ]; then
    echo "install-system-packages: cp2k_shell and pw.x already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-packages: no apt-get here; install $PACKAGES by hand (missing:$missing); continuing"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "install-system-packages: not root; run 'sudo apt-get install $PACKAGES' (missing:$missing); continuing"
    exit 0
fi
if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $PACKAGES; } >/tmp/qmml-apt.log 2>&1; then
    echo "install-system-packages: apt-get failed (see /tmp/qmml-apt.log, last line: $(tail -n 1 /tmp/qmml-apt.log)); continuing"
    exit 0
fi
echo "install-system-packages: installed $PACKAGES"
