//! Progress reporting and cancellation, shared by the CLI's progress bar and the browser.

/// The stages of a stylization, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Prompt embeddings (text encoder), when not precomputed.
    Text,
    /// VAE encoding of the content and style images.
    Encode,
    /// The style and content branches, run once for their consistency features.
    Features,
    /// The LCM steps on the target.
    Denoise,
    /// VAE decoding of the result.
    Decode,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Text => "text",
            Stage::Encode => "encode",
            Stage::Features => "features",
            Stage::Denoise => "denoise",
            Stage::Decode => "decode",
        }
    }
}

/// Where a run stands: `step` of `steps` within `stage`, and the overall fraction done
/// (counted in UNet-evaluation-sized units of work).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub stage: Stage,
    pub step: usize,
    pub steps: usize,
    pub fraction: f32,
}

/// Receives progress; asked between model calls whether to stop.
pub trait Observer {
    fn progress(&mut self, _p: Progress) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// Observes nothing, never cancels.
pub struct Silent;

impl Observer for Silent {}

/// An observer made of a closure: return `false` to cancel.
pub struct FnObserver<F: FnMut(Progress) -> bool> {
    f: F,
    stop: bool,
}

impl<F: FnMut(Progress) -> bool> FnObserver<F> {
    pub fn new(f: F) -> Self {
        Self { f, stop: false }
    }
}

impl<F: FnMut(Progress) -> bool> Observer for FnObserver<F> {
    fn progress(&mut self, p: Progress) {
        if !(self.f)(p) {
            self.stop = true;
        }
    }
    fn cancelled(&self) -> bool {
        self.stop
    }
}
