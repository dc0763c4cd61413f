#!/usr/bin/env bash
# make report: renders docs/report.md to docs/report.pdf with pandoc and weasyprint (Debian's packages, installed with apt-get when missing and run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v pandoc >/dev/null 2>&1 || missing+=(pandoc)
command -v weasyprint >/dev/null 2>&1 || missing+=(weasyprint)
if [ ${#missing[@]} != 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "${missing[*]} not installed: sudo apt-get install -y ${missing[*]} fonts-dejavu-core" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" fonts-dejavu-core
fi
cd docs
pandoc report.md --standalone --css report.css --pdf-engine=weasyprint \
  --metadata lang=en -o report.pdf
echo "docs/report.pdf: $(pdfinfo report.pdf 2>/dev/null | awk '/^Pages:/ {print $2 " pages"}')"
