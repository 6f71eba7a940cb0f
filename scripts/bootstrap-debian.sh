#!/usr/bin/env bash
# Installs the Debian packages paperchart needs outside Python, once per machine.
#   poppler-utils  pdftoppm, used by pdf2image to rasterize scanned PDF pages
#   tesseract-ocr  the peer OCR engine that bench/ocr.py measures us against
#   fonts-dejavu-core  the fonts the synthetic document generator renders with
#   fonts-dkg-handwriting fonts-breip fonts-humor-sans  handwriting-like fonts for the generated
#                      intake forms filled in by hand (tests/fixtures/generate.py)
# PAPERCHART_WITH_BROWSER=1 (set by `make test`) adds Chromium for the review-page browser tests.
set -euo pipefail

packages=(poppler-utils tesseract-ocr fonts-dejavu-core fonts-dkg-handwriting fonts-breip fonts-humor-sans)
if [[ "${PAPERCHART_WITH_BROWSER:-0}" == "1" ]]; then
    packages+=(chromium)
fi

missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null; then
        SUDO=sudo
    else
        echo "bootstrap: need root to install: ${missing[*]}" >&2
        exit 1
    fi
else
    SUDO=
fi

echo "bootstrap: installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
