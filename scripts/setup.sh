#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for voiceprint: system packages, then .venv.
#   bash scripts/setup.sh          # what the scripts need (training, inference, microphone, service)
#   bash scripts/setup.sh --dev    # plus what the tests need (pytest, hypothesis, Playwright + Debian chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1

# system packages (already-installed ones are left alone): PortAudio for pyaudio,
# PulseAudio for the virtual test microphone, flite for the demo clips, chromium for the browser test
packages=(portaudio19-dev libsndfile1 python3-venv)
[ "$dev" -eq 1 ] && packages+=(pulseaudio libasound2-plugins flite chromium)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# python environment
[ -x .venv/bin/python ] || python3 -m venv .venv
if [ "$dev" -eq 1 ]; then
    .venv/bin/pip install -q -r requirements-dev.txt
else
    .venv/bin/pip install -q -r requirements.txt
fi
echo "setup done: .venv is ready"
