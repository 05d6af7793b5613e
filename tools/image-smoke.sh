#!/usr/bin/env bash
# Build the Chorus image for real and smoke-run it, on a machine with no registry access and no container runtime
# able to create cgroups (`make image-smoke`; needs root, Debian's apt and the Debian mirror):
#   1. podman, buildah and debootstrap from Debian;
#   2. a base image made locally: debootstrap --variant=minbase bookworm + python3, imported into podman;
#   3. the wheelhouse (tools/fill-wheelhouse.sh), so pip inside the build needs no index;
#   4. podman build --isolation chroot --build-arg WHEELHOUSE=1 (the repository's one Dockerfile);
#   5. the built image's filesystem (a created, never started, container, mounted) run with chroot as the image's
#      user with its entrypoint `chorus serve`: /readyz must answer 200 and a sample must transcribe.
# Work files live in build/image/ (git-ignored); the base root file system is reused between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${IMAGE_WORK:-build/image}
BASE=localhost/chorus-base:bookworm
IMAGE=localhost/chorus:smoke
PORT=${SMOKE_PORT:-18573}
mkdir -p "$WORK"
step() { printf '\n== %s\n' "$*"; }

step "system packages"
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah debootstrap fuse-overlayfs >/dev/null
fi

step "base image $BASE (debootstrap bookworm + python3)"
if ! podman image exists "$BASE"; then
    if [ ! -x "$WORK/rootfs/usr/bin/python3" ]; then
        rm -rf "$WORK/rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$WORK/rootfs" \
            http://deb.debian.org/debian >"$WORK/debootstrap.log"
    fi
    tar -C "$WORK/rootfs" -c . | podman import - "$BASE" >/dev/null
fi

step "wheelhouse"
tools/fill-wheelhouse.sh

step "podman build $IMAGE (chroot isolation, wheelhouse only)"
podman build --isolation chroot --network host --build-arg PYTHON_IMAGE="$BASE" --build-arg WHEELHOUSE=1 \
    -t "$IMAGE" . | tail -n 5

step "smoke run: the image's entrypoint in its own file system"
cid=$(podman create "$IMAGE")
mnt=$(podman mount "$cid")
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    podman unmount "$cid" >/dev/null || true
    podman rm "$cid" >/dev/null || true
}
trap cleanup EXIT
entrypoint=$(podman image inspect "$IMAGE" --format '{{json .Config.Entrypoint}}')
[ "$entrypoint" = '["chorus"]' ] || { echo "unexpected entrypoint $entrypoint"; exit 1; }
user=$(podman image inspect "$IMAGE" --format '{{.Config.User}}')
# A private mount namespace: /proc, /dev and /tmp exist for the server and vanish with it.
unshare --mount --fork sh -c "
    mount -t proc proc '$mnt/proc' && mount --rbind /dev '$mnt/dev' && mount -t tmpfs tmpfs '$mnt/tmp' &&
    exec chroot --userspec=$user:$user '$mnt' /usr/bin/env -i HOME=/home/chorus PATH=/opt/chorus/bin:/usr/bin:/bin \
        CHORUS_STORE=/data/store CHORUS_DATA_DIR=/data sh -c 'cd /data && exec chorus serve --host 127.0.0.1 --port $PORT'
" >"$WORK/server.log" 2>&1 &
server_pid=$!
url="http://127.0.0.1:$PORT"
for _ in $(seq 300); do
    curl -fsS "$url/readyz" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$WORK/server.log"; echo "server exited"; exit 1; }
    sleep 1
done
curl -fsS "$url/readyz"; echo
text=$(curl -fsS "$url/v1/audio/transcriptions" -F file=@server/chorus_server/demo_model/samples/en-1.wav -F model=en)
echo "transcription: $text"
echo "$text" | grep -q '"text":"[^"]' || { echo "no text in the transcription"; exit 1; }
echo "image-smoke: OK ($(podman image inspect "$IMAGE" --format '{{.Size}}') bytes)"
