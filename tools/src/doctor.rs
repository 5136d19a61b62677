//! `srcache doctor`: what this binary sees of libtorch and the hardware.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;

pub fn run() -> anyhow::Result<()> {
    println!("srcache        {}", env!("CARGO_PKG_VERSION"));
    let (version, lib) = loaded_torch();
    println!("torch          {version}");
    if let Some(lib) = lib {
        println!("libtorch       {}", lib.display());
    }
    println!("torch (built)  {}", env!("SRCACHE_TORCH_BUILT_VERSION"));
    let n = tch::Cuda::device_count();
    println!("cuda devices   {n}");
    for i in 0..n {
        println!("  cuda:{i}       {}", cuda_device_name(i).unwrap_or_else(|| "(name unavailable)".into()));
    }
    println!("cudnn          {}", if tch::Cuda::cudnn_is_available() { "available" } else { "not available" });
    println!("cpu threads    {} (torch intra-op threads: {})", num_cpus::get(), tch::get_num_threads());
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
