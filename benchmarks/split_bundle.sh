#!/bin/bash
# Splits the vLLM device bundle's chunks (../shared/gpu/build-bundle.sh writes ~61 MiB
# chunks to .device-bundle/cN/partN) in two, into .device-carry/pN.1 and pN.2: a device call
# carries the tracked tree too (~4.5 MB now) within its 64 MiB, so a whole chunk no longer
# fits beside it. The halves sort (sort -V) into the same byte order as the chunks. Upload
# each with `mkdir -p /root/stash && cp .device-carry/*/part* /root/stash/` (carry one
# .device-carry/pN.K per call), then run `bash .device-bundle/c3/device-setup.sh` with the
# last chunk (small enough to carry whole): it finds every part and unpacks.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .device-carry
for dir in .device-bundle/c*; do
  for part in "$dir"/part*; do
    name=$(basename "$part")
    size=$(stat -c %s "$part")
    [ "$size" -gt $((40 * 1024 * 1024)) ] || continue  # small enough to carry as it is
    half=$(((size + 1) / 2))
    mkdir -p ".device-carry/${name#part}.1" ".device-carry/${name#part}.2"
    head -c "$half" "$part" > ".device-carry/${name#part}.1/$name.1"
    tail -c +"$((half + 1))" "$part" > ".device-carry/${name#part}.2/$name.2"
  done
done
ls -d .device-carry/* 2>/dev/null
