#!/usr/bin/env bash
# The main job: sets up the environment if needed (./setup_env.sh), then runs the offline SKD
# study (fairseq-skd-demo). Arguments go to fairseq-skd-demo: ./run.sh --help
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$repo/setup_env.sh"
exec "${SKD_VENV:-$repo/.venv}/bin/fairseq-skd-demo" "$@"
