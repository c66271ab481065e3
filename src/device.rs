//! Picking the compute device at run time.

use burn::tensor::Device;

/// Which burn backend runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// burn's pure-Rust CPU backend (flex).
    Cpu,
    /// burn-wgpu (Vulkan, Metal, DX12 natively; WebGPU in the browser).
    Wgpu,
}

impl std::str::FromStr for Backend {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "cpu" => Ok(Backend::Cpu),
            "wgpu" => Ok(Backend::Wgpu),
            other => Err(crate::Error::InvalidOption(format!("backend `{other}`: expected cpu or wgpu"))),
        }
    }
}

/// The device for `backend`, initialised (synchronously; natively only).
#[cfg(not(target_arch = "wasm32"))]
pub fn device(backend: Backend) -> crate::Result<Device> {
    match backend {
        #[cfg(feature = "cpu")]
        Backend::Cpu => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => {
            // burn registers the wgpu runtime once per process; a second init fails, so
            // initialise once and hand out clones.
            static WGPU: std::sync::OnceLock<Result<Device, String>> = std::sync::OnceLock::new();
            WGPU.get_or_init(|| Device::wgpu_options().init().map_err(|e| e.to_string()))
                .clone()
                .map_err(|e| crate::Error::Device(format!("no usable wgpu adapter: {e}")))
        }
        #[allow(unreachable_patterns)]
        other => Err(crate::Error::InvalidOption(format!("backend {other:?} is not compiled in"))),
    }
}
