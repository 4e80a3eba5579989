#!/bin/sh
# Build and install the sasl-xoauth2 Cyrus SASL plug-in (https://github.com/tarickb/sasl-xoauth2)
# for bench_relay_delivery.py's Postfix comparison; Debian 12 has no package for it. Run as root:
#   bench/build_sasl_xoauth2.sh /path/to/a/sasl-xoauth2/checkout
# It installs libsasl-xoauth2.so into Cyrus SASL's plug-in directory and /etc/sasl-xoauth2.conf
# (placeholders: the bench's token file carries the client, token endpoint and CA it needs).
set -eu
SOURCE=$(cd "${1:?usage: $0 SOURCE_DIR}" && pwd)
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
apt-get install -y -q cmake g++ pkg-config libsasl2-dev libcurl4-openssl-dev libjsoncpp-dev >/dev/null
cp -r "$SOURCE" "$BUILD/src"
# The docs directory only renders the man page and needs pandoc; the plug-in does not.
sed -i 's/^add_subdirectory(docs)/# &/' "$BUILD/src/CMakeLists.txt"
cmake -S "$BUILD/src" -B "$BUILD/out" -DCMAKE_INSTALL_PREFIX=/usr -DCMAKE_INSTALL_SYSCONFDIR=/etc \
    -DEnableTests=OFF >/dev/null
make -C "$BUILD/out" -j"$(nproc)" >/dev/null
make -C "$BUILD/out" install
