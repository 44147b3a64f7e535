#!/usr/bin/env bash
# The default job: build, then run the tiny CPU config on the embedded synthetic corpus.
# Until the trainer lands this is the data pipeline: generate the corpus if absent, inspect it.
set -euo pipefail
cd "$(dirname "$0")/.."
launch/build.sh build
build/cadtrain config check --config configs/tiny_cpu.pbtxt > /dev/null
build/cadtrain data synth --config configs/tiny_cpu.pbtxt
build/cadtrain data inspect data_out/synth_train.h5 --verify --doc 0 --tokens 400
