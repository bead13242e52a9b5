#!/usr/bin/env bash
# The test suite: sets up the environment if needed (./setup_env.sh), then runs pytest.
# Arguments go to pytest: ./test.sh -k criterion -x
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$repo/setup_env.sh"
cd "$repo"
exec "${SKD_VENV:-$repo/.venv}/bin/python" -m pytest "$@"
