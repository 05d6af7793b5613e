#!/bin/sh
# System packages for `chorus dev make-corpus` and `make demo-model`: the espeak-ng synthesizer and the Debian
# word lists the corpus draws its text from (Debian/Ubuntu). Needs root or sudo.
set -eu
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    espeak-ng wamerican wfrench wngerman wspanish witalian
