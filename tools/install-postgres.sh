#!/bin/sh
# PostgreSQL server binaries for the tests' throwaway servers (tests/postgres_server.py): Debian's `postgresql`
# package, installed only when `initdb` is missing and apt-get is there (CI; needs root or sudo). The package
# would create and start a system cluster on port 5432; the tests need neither, so neither is made.
set -eu
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    exit 0  # already installed
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-postgres: no initdb and no apt-get; install PostgreSQL's server binaries yourself" >&2
    exit 0  # the PostgreSQL tests skip (or fail where CHORUS_TEST_POSTGRES=require) and say why
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
# No cluster at install time (postgresql-common reads this), and no service start (invoke-rc.d asks policy-rc.d).
$SUDO mkdir -p /etc/postgresql-common
if ! grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
    echo "create_main_cluster = false" | $SUDO tee -a /etc/postgresql-common/createcluster.conf >/dev/null
fi
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod 755 "$POLICY"
    trap '$SUDO rm -f "$POLICY"' EXIT
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql
