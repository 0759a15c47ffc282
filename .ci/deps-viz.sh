#!/usr/bin/env bash
# Dependencies of the inseq-viz tests (sourced by .ci/run).
# Headless Chromium renders the self-contained HTML heatmap in
# crates/inseq-viz/tests/html_chromium.rs (set INSEQ_REQUIRE_CHROMIUM=1 to make
# its absence a failure instead of a skip).
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
    $SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium fonts-dejavu-core
fi
