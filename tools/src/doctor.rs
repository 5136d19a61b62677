//! `srcache doctor`: what this binary sees of libtorch and the hardware.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;

/// Print versions and hardware: srcache, the libtorch actually loaded (and its CUDA build), CUDA devices, cuDNN, CPU threads.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// One JSON object instead of text (for scripts, e.g. scripts/gpu-check.sh).
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Report {
    srcache: String,
    torch: String,
    libtorch: Option<PathBuf>,
    torch_built: String,
    /// The CUDA toolkit torch was built for (`cu130` in `2.11.0+cu130`), None for a CPU-only build.
    cuda_build: Option<String>,
    cuda_runtime: Option<i64>,
    /// The CUDA version the installed NVIDIA driver supports (`cuDriverGetVersion`, e.g. 13000), when a driver loads.
    cuda_driver: Option<i64>,
    cuda_devices: Vec<Gpu>,
    /// Why no CUDA device is usable, in words; None when there is one.
    cuda_unavailable: Option<String>,
    cudnn: Option<i64>,
    cpu_threads: usize,
    torch_threads: i32,
}

#[derive(serde::Serialize)]
struct Gpu {
    device: String,
    name: Option<String>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (torch, libtorch) = loaded_torch();
    let cuda_build = torch.split_once('+').map(|(_, b)| b.to_string()).filter(|b| b.starts_with("cu"));
    let n = tch::Cuda::device_count();
    // Only asked when present: libtorch throws (and tch would panic) when CUDA or cuDNN is missing.
    let cudnn = tch::Cuda::cudnn_is_available().then(tch::utils::version_cudnn);
    let cuda_runtime = (n > 0 && tch::utils::has_cudart()).then(tch::utils::version_cudart);
    let driver = cuda_driver();
    let cuda_unavailable = (n == 0).then(|| no_cuda_reason(cuda_build.as_deref(), &driver));
    let r = Report {
        srcache: env!("CARGO_PKG_VERSION").into(),
        torch,
        libtorch,
        torch_built: env!("SRCACHE_TORCH_BUILT_VERSION").into(),
        cuda_build,
        cuda_runtime,
        cuda_driver: driver.as_ref().ok().copied(),
        cuda_devices: (0..n).map(|i| Gpu { device: format!("cuda:{i}"), name: cuda_device_name(i) }).collect(),
        cudnn,
        cuda_unavailable,
        cpu_threads: num_cpus::get(),
        torch_threads: tch::get_num_threads(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("srcache        {}", r.srcache);
    println!("torch          {}", r.torch);
    if let Some(lib) = &r.libtorch {
        println!("libtorch       {}", lib.display());
    }
    println!("torch (built)  {}", r.torch_built);
    println!("cuda build     {}", r.cuda_build.as_deref().unwrap_or("none (CPU-only torch)"));
    if let Some(v) = r.cuda_runtime {
        println!("cuda runtime   {}.{}", v / 1000, (v % 1000) / 10);
    }
    if let Ok(v) = &driver {
        println!("cuda driver    supports CUDA {}.{}", v / 1000, (v % 1000) / 10);
    }
    match &r.cuda_unavailable {
        Some(why) => println!("cuda devices   0: {why}"),
        None => println!("cuda devices   {n}"),
    }
    for g in &r.cuda_devices {
        println!("  {:<12} {}", g.device, g.name.as_deref().unwrap_or("(name unavailable)"));
    }
    match r.cudnn {
        Some(v) => println!("cudnn          {v}"),
        None => println!("cudnn          not available"),
    }
    println!("cpu threads    {} (torch intra-op threads: {})", r.cpu_threads, r.torch_threads);
    Ok(())
}

/// The version of the libtorch actually loaded (LD_LIBRARY_PATH may point at another install than the
/// one built against): find libtorch_cpu.so in our own memory map and read the wheel's `version.py` beside it.
fn loaded_torch() -> (String, Option<PathBuf>) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let lib = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.ends_with("/libtorch_cpu.so")).map(PathBuf::from);
    let version = lib
        .as_ref()
        .and_then(|l| l.parent()?.parent().map(|torch| torch.join("version.py")))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("__version__ = ").map(|v| v.trim_matches(['\'', '"']).to_string())))
        .unwrap_or_else(|| "unknown (libtorch has no version.py beside it)".into());
    (version, lib.map(|l| l.parent().map(|p| p.to_path_buf()).unwrap_or(l)))
}

/// tch has no device-name call; the CUDA runtime that libtorch_cuda already loaded does. `name` is the first
/// field of cudaDeviceProp in every CUDA version, so a generous buffer is enough and the rest is ignored.
fn cuda_device_name(device: i64) -> Option<String> {
    type GetProps = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;
    for sym in [c"cudaGetDeviceProperties_v2", c"cudaGetDeviceProperties"] {
        // SAFETY: dlsym on the global scope with a NUL-terminated name; a null result is checked.
        let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, sym.as_ptr()) };
        if f.is_null() {
            continue;
        }
        // SAFETY: the symbol is the CUDA runtime's cudaGetDeviceProperties(_v2), whose signature is GetProps.
        let get: GetProps = unsafe { std::mem::transmute::<*mut c_void, GetProps>(f) };
        let mut buf = vec![0u8; 16 * 1024];
        // SAFETY: buf is far larger than any cudaDeviceProp; the device index is < device_count.
        let rc = unsafe { get(buf.as_mut_ptr().cast(), device as c_int) };
        if rc != 0 {
            return None;
        }
        buf[255] = 0;
        // SAFETY: buf[255] == 0 guarantees a terminator inside the 256-byte name field.
        let name = unsafe { CStr::from_ptr(buf.as_ptr() as *const c_char) };
        return Some(name.to_string_lossy().into_owned());
    }
    None
}

/// The CUDA version the NVIDIA driver supports, or why no driver could be asked. The driver library is opened
/// here (not linked): on a machine without one, that is the answer.
fn cuda_driver() -> Result<i64, String> {
    // SAFETY: dlopen with a NUL-terminated name; a null handle is checked and dlerror read right after.
    let handle = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW) };
    if handle.is_null() {
        // SAFETY: dlerror returns null or a NUL-terminated string owned by libc, copied at once.
        let e = unsafe { libc::dlerror() };
        let why = if e.is_null() { "not found".to_string() } else { unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned() };
        return Err(format!("no NVIDIA driver: libcuda.so.1 cannot be loaded ({why})"));
    }
    type GetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
    // SAFETY: dlsym on a live handle with a NUL-terminated name; a null result is checked.
    let f = unsafe { libc::dlsym(handle, c"cuDriverGetVersion".as_ptr()) };
    if f.is_null() {
        return Err("libcuda.so.1 has no cuDriverGetVersion: not an NVIDIA driver library".into());
    }
    // SAFETY: cuDriverGetVersion(int*) is the driver API's signature in every CUDA version.
    let get: GetVersion = unsafe { std::mem::transmute::<*mut c_void, GetVersion>(f) };
    let mut v: c_int = 0;
    // SAFETY: v is a valid out-pointer.
    match unsafe { get(&mut v) } {
        0 => Ok(v as i64),
        rc => Err(format!("the NVIDIA driver does not answer (cuDriverGetVersion error {rc})")),
    }
}

/// Why libtorch sees no CUDA device, from what can be asked without a device: the build, the driver, the runtime.
fn no_cuda_reason(cuda_build: Option<&str>, driver: &Result<i64, String>) -> String {
    let Some(build) = cuda_build else {
        return "this torch is a CPU-only build; install a CUDA build of torch 2.11.0 (e.g. +cu130) to use GPUs".into();
    };
    // "cu130" -> CUDA 13.0 -> 13000, the unit of cuDriverGetVersion.
    let needed = build.strip_prefix("cu").and_then(|d| d.parse::<i64>().ok()).map(|d| (d / 10) * 1000 + (d % 10) * 10);
    let need_text = needed.map(|v| format!("CUDA {}.{}", v / 1000, (v % 1000) / 10)).unwrap_or_else(|| build.to_string());
    match driver {
        Err(why) => format!("{why}; this torch ({build}) needs an NVIDIA GPU with a driver that supports {need_text} (for CUDA 13: R580 or newer)"),
        Ok(v) if needed.is_some_and(|n| *v < n) => format!(
            "the NVIDIA driver supports CUDA {}.{}, older than the {need_text} this torch ({build}) is built for: update the driver, or \
             install a torch 2.11.0 built for CUDA {}.{} or older",
            v / 1000,
            (v % 1000) / 10,
            v / 1000,
            (v % 1000) / 10
        ),
        Ok(_) => match cuda_runtime_error() {
            Some(e) => format!("the driver loads, but the CUDA runtime reports: {e}"),
            None => "the NVIDIA driver loads but reports no GPU (check `nvidia-smi`, CUDA_VISIBLE_DEVICES, and /dev/nvidia*)".into(),
        },
    }
}

/// The CUDA runtime's own word for an empty device list (`cudaGetDeviceCount`'s error), from the libcudart that
/// libtorch_cuda loaded; None when it reports success or is not loaded.
fn cuda_runtime_error() -> Option<String> {
    type Count = unsafe extern "C" fn(*mut c_int) -> c_int;
    type ErrStr = unsafe extern "C" fn(c_int) -> *const c_char;
    // SAFETY: dlsym on the global scope with NUL-terminated names; null results are checked.
    let (count, err) =
        unsafe { (libc::dlsym(libc::RTLD_DEFAULT, c"cudaGetDeviceCount".as_ptr()), libc::dlsym(libc::RTLD_DEFAULT, c"cudaGetErrorString".as_ptr())) };
    if count.is_null() || err.is_null() {
        return None;
    }
    // SAFETY: the CUDA runtime's cudaGetDeviceCount(int*) and cudaGetErrorString(cudaError_t) signatures.
    let (count, err) = unsafe { (std::mem::transmute::<*mut c_void, Count>(count), std::mem::transmute::<*mut c_void, ErrStr>(err)) };
    let mut n: c_int = 0;
    // SAFETY: n is a valid out-pointer.
    let rc = unsafe { count(&mut n) };
    if rc == 0 {
        return None;
    }
    // SAFETY: cudaGetErrorString returns a static NUL-terminated string.
    let text = unsafe { err(rc) };
    Some(if text.is_null() { format!("error {rc}") } else { format!("{} (error {rc})", unsafe { CStr::from_ptr(text) }.to_string_lossy()) })
}
