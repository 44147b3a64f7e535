#!/usr/bin/env bash
# The default job: build, train the tiny CPU config on the embedded synthetic corpus (generated
# into data_out/ on first use), then let the trained model complete a prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
launch/build.sh build
build/cadtrain train --config configs/tiny_cpu.pbtxt
build/cadtrain sample runs/tiny --prompt "The code word QXZT is 4821. the old farmer visits the quiet forest. Recall: QXZT is " --tokens 40
