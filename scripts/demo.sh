#!/usr/bin/env bash
# The main job on the bundled model and demo clips: 1:1 contrast of a same pair and a
# different pair, then 1:N recognition of every demo clip against the enrolled audio_db/.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -x "$py" ] || py=python3
echo "== 1:1 contrast, same voice"
$py infer_contrast.py --audio_path1=audio/a1.wav --audio_path2=audio/a2.wav
echo "== 1:1 contrast, different voices"
$py infer_contrast.py --audio_path1=audio/a1.wav --audio_path2=audio/b2.wav
echo "== 1:N recognition against audio_db/"
$py infer_recognition.py --audio_db audio_db --recognize audio/a1.wav audio/b1.wav audio/c2.wav
