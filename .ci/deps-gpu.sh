#!/usr/bin/env bash
# Dependencies of the wgpu backend test (sourced by .ci/run): Mesa's software Vulkan
# driver (llvmpipe) gives wgpu an adapter on machines without a GPU.
if [ ! -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] && [ ! -e /usr/share/vulkan/icd.d/lvp_icd.json ]; then
    SUDO=""
    if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
    $SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends mesa-vulkan-drivers libvulkan1
fi
