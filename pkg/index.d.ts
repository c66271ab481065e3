// Types of zepo-web's JS API (zepo.js). Hand-written: keep in step with www/zepo.js,
// www/worker.js and the engine's option parser (src/web/engine.rs); tests/browser/
// package.test.mjs type-checks a usage file against them.

/** An image: a Blob or File (PNG, JPEG, WebP, BMP or GIF, or a format the browser decodes: AVIF, HEIC in Safari), or its bytes. */
export type ImageInput = Blob | ArrayBuffer | ArrayBufferView;

/** Token merging in the self-attention layers (ToMe). */
export interface TomeOptions {
  /** Fraction of the tokens merged, in [0, 1) (0.5). */
  ratio?: number;
  /** Width of a cell of the token map; one token per cell is a merge destination (2). */
  sx?: number;
  /** Height of a cell of the token map (2). */
  sy?: number;
  /** The same destination in every cell instead of a seeded random one (false). */
  deterministic?: boolean;
}

/** The pipeline's options; each defaults to the reference implementation's value. */
export interface StylizeOptions {
  /** Working size in pixels, a multiple of 8, at most 1024 (512): the output's width and
   * height, or with `fit` 'cover' or 'contain' the long side of the portrait's shape. */
  resolution?: number;
  /** An explicit output width (with `height`): a multiple of 8, at most 1024. */
  width?: number;
  /** An explicit output height (with `width`): a multiple of 8, at most 1024. */
  height?: number;
  /** How the images meet the size ('stretch'): 'stretch' resizes them to it whatever their
   * shape (the reference); 'cover' fills it, centre-cropped (without width/height the size is
   * the portrait's shape, long side `resolution`); 'contain' keeps the portrait's whole frame
   * (the size is its shape, within width×height or resolution²). The style is centre-cropped
   * with 'cover' and 'contain'. */
  fit?: 'stretch' | 'cover' | 'contain';
  /** LCM denoising steps (4). */
  steps?: number;
  /** How far the content is noised before denoising, in (0, 1] (0.5). */
  strength?: number;
  /** Classifier-free guidance scale (2). */
  cfg?: number;
  /** Multiplier of the style logits in the controlled self-attention (1.2). */
  styleGuidance?: number;
  /** Timestep at which the content and style features are taken, below the scheduler's training steps (99). */
  featureStep?: number;
  /** First controlled self-attention layer, in UNet call order (8). */
  startLayer?: number;
  /** End (exclusive) of the controlled layers, at most the model's self-attention count (16). */
  endLayer?: number;
  /** Query mix `q ← mixQ·q + (1 − mixQ)·q_content`, in [0, 1]; 1 is off (1). */
  mixQ?: number;
  /** Token merging: true (defaults), false or null (off), or its settings (true). */
  tome?: boolean | null | TomeOptions;
  /** Text prompt ('face'). */
  prompt?: string;
  /** Negative prompt (''). */
  negativePrompt?: string;
  /** Seed of every random draw: the same seed gives the same image (0). */
  seed?: number;
  /** The LCM guidance embedding instead of classifier-free guidance: half the UNet work, a
   * different image from the reference's (false). */
  noCfg?: boolean;
}

/** What the engine computes in: 'auto' is f16 where the GPU has `shader-f16`, else f32. */
export type Precision = 'auto' | 'f16' | 'f32';

/** Bytes of the model's weights arriving (from the network or the browser's cache). */
export interface DownloadProgress {
  stage: 'download';
  /** The file being read, relative to the model's URL. */
  file: string;
  /** Bytes so far, over every file of this call. */
  loaded: number;
  /** Bytes expected in all (grows when a file of unknown size is opened). */
  total: number;
}

/**
 * The engine compiling its GPU pipelines (`ZePo.warmup`, `ZePo.load({ warmup })`): one event as
 * it starts, shaped like a stage (step 0 of 1).
 */
export interface WarmupProgress {
  stage: 'warmup';
  step: number;
  steps: number;
  fraction: number;
  /** The resolution being prepared. */
  resolution: number;
}

/** A part of the model being put on the GPU. */
export interface LoadProgress {
  stage: 'load';
  part: 'scheduler' | 'unet' | 'vae';
}

/** A stage of a stylization, before each model call; 'done' comes last. */
export interface StageProgress {
  stage: 'text' | 'encode' | 'features' | 'denoise' | 'decode' | 'done';
  /** Step within the stage, from 0. */
  step: number;
  /** Steps in the stage. */
  steps: number;
  /** The whole run's fraction done, 0..1. */
  fraction: number;
}

export type ProgressEvent = DownloadProgress | LoadProgress | WarmupProgress | StageProgress;

export type ProgressCallback = (event: ProgressEvent) => void;

/** Which model: where it is, which revision and weight files. */
export interface ModelOptions {
  /**
   * Base URL of a diffusers-layout model or fp16 bundle, or a hub repository id
   * ('SimianLuo/LCM_Dreamshaper_v7', fetched from `env.remoteHost`; a relative path of that
   * shape is written './owner/name'). Default: DEFAULT_MODEL.
   */
  model?: string | URL;
  /** The revision of a hub repository id: branch, tag or commit ('main'). */
  revision?: string;
  /**
   * A diffusers layout's weight variant to prefer: 'fp16' (default) takes
   * `*.fp16.safetensors` (or its shards) where the repository has them, half the download,
   * else the full files; null takes the full files.
   */
  variant?: string | null;
  /**
   * Which of a bundle's weights to load, apart from `precision` (the compute type): 'auto'
   * (default) the smallest variant the bundle has; 'fp16'; or a compact variant made by
   * `zepo weights convert --variants`: 'q8' (8-bit, about 53% of fp16), 'mixed' (4 to 8 bits
   * per tensor, chosen by the converter for its PSNR target). A diffusers layout has only its
   * own weights ('auto' or 'fp16').
   */
  weights?: Weights;
}

/** A bundle's weights: its smallest ('auto'), its fp16 ones, or a compact variant by name. */
export type Weights = 'auto' | 'fp16' | 'q8' | 'mixed' | (string & {});

/** Options of an engine: which model, in which precision, with which progress callback. */
export interface LoadOptions extends ModelOptions {
  precision?: Precision;
  onProgress?: ProgressCallback;
  /** Another URL for the engine's Worker (a copy of worker.js); rarely needed. */
  workerUrl?: string | URL;
  /**
   * Right after loading, compile the GPU's pipelines for stylizations with these options (true:
   * the defaults, resolution 512), so that the first one costs what later ones do. See
   * `ZePo.warmup`.
   */
  warmup?: boolean | StylizeOptions;
}

/** Options of one `engine.stylize` call. */
export interface RunOptions extends StylizeOptions {
  onProgress?: ProgressCallback;
  /** Aborting it stops the run at its next step: the promise rejects with an AbortError. */
  signal?: AbortSignal;
}

/** Options of the `stylize` function: the run's, plus the shared engine's. */
export interface SharedStylizeOptions extends RunOptions, ModelOptions {
  precision?: Precision;
}

/** The WebGPU device (values as strings; the adapter's fields only when the browser tells). */
export interface DeviceInfo {
  backend: string;
  device_type: string;
  adapter?: string;
  driver?: string;
  driver_info?: string;
  precision: 'f16' | 'f32';
  shader_f16: 'true' | 'false';
  max_buffer_size: string;
  max_storage_binding: string;
  gpu_vendor?: string;
  gpu_architecture?: string;
  gpu_description?: string;
}

/** The loaded model. */
export interface ModelInfo {
  /** Self-attention layers of the UNet (the range startLayer..endLayer refers to). */
  self_attentions: number;
  precision: 'f16' | 'f32';
  /** The weights loaded: 'fp16' (a diffusers layout's own weights too) or a compact variant. */
  weights: string;
  /**
   * GPU bytes holding the UNet's and the VAE's weights: floats in `precision`, compact weights
   * as they stay on the GPU (their kernels dequantize as they read them).
   */
  weight_bytes: number;
  /** Seconds the load took. */
  seconds: number;
  /** Bytes read (network or cache). */
  bytes: number;
  /** HTTP requests made (0 when everything came from the cache). */
  requests: number;
}

/** The work of one stylization: a run that reused the style's features shows fewer UNet evaluations. */
export interface RunCounters {
  /** UNet evaluations, counted per batch item (the two CFG halves are two). */
  unet_evals: number;
  vae_encodes: number;
  vae_decodes: number;
}

/** Timings of an engine's last stylization. */
export interface RunInfo {
  seconds: number;
  /** Seconds per stage. */
  stages: Partial<Record<StageProgress['stage'], number>>;
  /** Bytes read for this run (the text encoder, when a custom prompt needs it). */
  downloaded: number;
  counters: RunCounters;
}

/** Options of `stylizeMany`: a run's, per portrait. */
export interface ManyOptions extends StylizeOptions {
  /** A stage of portrait `item` (of `items`). */
  onProgress?: (event: ProgressEvent & { item: number; items: number }) => void;
  /** Portrait `index` is done. */
  onItem?: (index: number, entry: ManyEntry) => void;
  /** Cancels the whole batch: the run in progress and those not begun. */
  signal?: AbortSignal;
  /** `itemSignals[i]` cancels portrait `i` alone. */
  itemSignals?: (AbortSignal | undefined)[];
}

/** One portrait of `stylizeMany`: its PNG, or why it has none (an AbortError when cancelled). */
export type ManyEntry = { png: Blob; seconds: number; counters: RunCounters; error?: undefined } | { error: Error; png?: undefined };

/**
 * The `name` of the Errors the API rejects with: WebGpuUnavailable (no navigator.gpu),
 * InvalidOption, ImageError (not a decodable image), NotFound / DownloadError (the model's
 * files), IntegrityError (size or sha256 against the model's manifest.json), WeightsError /
 * ConfigError (the files do not make a model), AbortError (cancelled), OutOfMemory, DeviceLost,
 * DeviceError, EngineCrashed, EngineMissing (the wasm could not be loaded), EngineDisposed,
 * EngineBusy. After OutOfMemory, DeviceLost, EngineCrashed or EngineMissing the engine is gone:
 * `stylize()` makes a new one, a `ZePo` must be loaded again.
 */
export type ZePoErrorName =
  | 'WebGpuUnavailable' | 'InvalidOption' | 'ImageError' | 'NotFound' | 'DownloadError'
  | 'IntegrityError' | 'WeightsError' | 'ConfigError' | 'AbortError' | 'OutOfMemory'
  | 'DeviceLost' | 'DeviceError' | 'EngineCrashed' | 'EngineMissing' | 'EngineDisposed'
  | 'EngineBusy';

/** The model used when none is given: the public LCM_Dreamshaper_v7 diffusers repository. */
export const DEFAULT_MODEL: string;

/** Where hub repository ids resolve: `remoteHost` + `remotePathTemplate` ({model}, {revision}). */
export const env: { remoteHost: string; remotePathTemplate: string };

/** A model's base URL: a URL or path as given, or a hub repository id resolved with `env`. */
export function resolveModel(model?: string, options?: { revision?: string }): string;

/** An engine: a Worker holding the model on the GPU. Make one with `await ZePo.load(...)`. */
export class ZePo {
  /** Starts the Worker, acquires the GPU and loads the model (downloaded once, then cached). */
  static load(options?: LoadOptions): Promise<ZePo>;
  /** Deletes the stored files of `model` (of every model without one); resolves to how many. */
  static clearCache(model?: string | URL, options?: { revision?: string }): Promise<number>;

  private constructor();

  /** The model's absolute base URL. */
  readonly model: string;
  readonly device: DeviceInfo;
  readonly info: ModelInfo;
  /** Set after each stylization. */
  readonly last?: RunInfo;
  /** The fatal error that ended this engine, if one did. */
  readonly dead: Error | null;

  /**
   * Stylizes `content` (a portrait) after `style`. Resolves to a PNG Blob of the working size (see `fit`), whose
   * text chunks (`zepo-settings`) hold the settings, seed and model that made it.
   * Calls queue (one runs at a time); the style's features are kept, so a second portrait in
   * the same style and options costs only its own work.
   */
  stylize(content: ImageInput, style: ImageInput, options?: RunOptions): Promise<Blob>;
  /**
   * Stylizes several portraits after one style, in order: the style's features are computed by
   * the first and reused by the others. Resolves to one entry per portrait; one that fails or is
   * cancelled does not stop the others (a fatal engine error rejects).
   */
  stylizeMany(contents: Iterable<ImageInput>, style: ImageInput, options?: ManyOptions): Promise<ManyEntry[]>;
  /**
   * Compiles the GPU's pipelines for stylizations with these options (the resolution is what
   * matters) by running one on synthetic images, so that the first real one costs what later
   * ones do. Queued like `stylize`; resolves to the seconds it took.
   */
  warmup(options?: StylizeOptions, control?: { onProgress?: ProgressCallback; signal?: AbortSignal }): Promise<number>;
  /** Whether a stylization with this style and options would reuse the kept style features. */
  hasStyle(style: ImageInput, options?: StylizeOptions, content?: ImageInput): Promise<boolean>;
  /** Frees the GPU memory and ends the Worker. */
  dispose(): void;
}

/**
 * Stylizes `content` after `style` with a shared engine, loaded on first use (again when
 * `model` or `precision` change, or after a fatal error). Resolves to a PNG Blob.
 */
export function stylize(content: ImageInput, style: ImageInput, options?: SharedStylizeOptions): Promise<Blob>;
