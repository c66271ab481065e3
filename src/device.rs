//! Picking the compute device at run time.

#[cfg(not(target_arch = "wasm32"))]
use burn::tensor::Device;

/// Which burn backend runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// burn's pure-Rust CPU backend (flex).
    Cpu,
    /// burn-wgpu (Vulkan, Metal, DX12 natively; WebGPU in the browser).
    Wgpu,
    /// burn's CUDA backend (built with the `cuda` feature).
    Cuda,
}

impl std::str::FromStr for Backend {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "cpu" => Ok(Backend::Cpu),
            "wgpu" => Ok(Backend::Wgpu),
            "cuda" => Ok(Backend::Cuda),
            other => Err(crate::Error::InvalidOption(format!("backend `{other}`: expected cpu, wgpu or cuda"))),
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
            wgpu_device().clone().map(|(device, _)| device).map_err(|e| crate::Error::Device(format!("no usable wgpu adapter: {e}")))
        }
        #[cfg(feature = "cuda")]
        Backend::Cuda => Ok(Device::cuda(0)),
        #[allow(unreachable_patterns)]
        other => Err(crate::Error::InvalidOption(format!("backend {other:?} is not compiled in"))),
    }
}

/// burn's wgpu runtime can be initialised once per process (a second `init` is an error), so the
/// device is made once and shared; with it, a description of its adapter.
#[cfg(all(not(target_arch = "wasm32"), feature = "wgpu"))]
fn wgpu_device() -> &'static Result<(Device, String), String> {
    static DEVICE: std::sync::OnceLock<Result<(Device, String), String>> = std::sync::OnceLock::new();
    DEVICE.get_or_init(|| {
        // As the browser engine: fewer, larger queue submits (burn's default is 32 dispatches each).
        let (device, setup) = Device::wgpu_options().tasks_max(128).init_with_setup().map_err(|e| e.to_string())?;
        let a = setup.adapter.get_info();
        Ok((device, format!("{} ({:?}, {:?}, driver {} {})", a.name, a.backend, a.device_type, a.driver, a.driver_info)))
    })
}

/// The adapter of the wgpu device (name, graphics API, type, driver), once it is initialised:
/// lets tests and logs confirm which GPU (or lavapipe) actually runs.
#[cfg(not(target_arch = "wasm32"))]
pub fn wgpu_adapter() -> Option<String> {
    #[cfg(feature = "wgpu")]
    if let Ok((_, info)) = wgpu_device() {
        return Some(info.clone());
    }
    None
}
