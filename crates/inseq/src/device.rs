//! Choosing the burn device from a name.

use burn::tensor::Device;
use inseq_core::{Error, Result};

/// Device names accepted by [`parse_device`], for help texts.
pub const DEVICE_NAMES: &str = "cpu (flex), ndarray, wgpu, cuda";

/// Parses `cpu`/`flex`, `ndarray`, `wgpu`, `cuda` into a device; backends not
/// compiled in give an error naming the cargo feature to enable.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        #[cfg(feature = "flex")]
        "cpu" | "flex" => return Ok(Device::flex()),
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        "ndarray" => return Ok(Device::ndarray()),
        #[cfg(feature = "wgpu")]
        "wgpu" => return Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "cuda")]
        "cuda" => return Ok(Device::cuda(0)),
        _ => {}
    }
    if ["cpu", "flex", "ndarray", "wgpu", "cuda"].contains(&name) {
        Err(Error::Unsupported(format!(
            "device `{name}` needs inseq to be built with the `{}` cargo feature",
            if name == "cpu" { "flex" } else { name }
        )))
    } else {
        Err(Error::invalid_arg(
            "device",
            format!("unknown device `{name}` (expected {DEVICE_NAMES})"),
        ))
    }
}

/// The default device: the first compiled-in of flex (CPU), ndarray, wgpu, cuda.
pub fn default_device() -> Result<Device> {
    ["cpu", "ndarray", "wgpu", "cuda"]
        .iter()
        .find_map(|n| parse_device(n).ok())
        .ok_or_else(|| {
            Error::Unsupported("no backend compiled in; enable the `flex` feature".into())
        })
}
