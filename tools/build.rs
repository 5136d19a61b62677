include!("../build/torch_rpath.rs");

fn main() {
    torch_rpath();
    link_cuda();
    built_version();
}

/// The torch version built against, for `srcache doctor` to compare with the one loaded at run time.
fn built_version() {
    let v = std::env::var("LIBTORCH")
        .ok()
        .and_then(|d| std::fs::read_to_string(std::path::Path::new(&d).join("version.py")).ok())
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("__version__ = ").map(|v| v.trim_matches(['\'', '"']).to_string())))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SRCACHE_TORCH_BUILT_VERSION={v}");
}

// Nothing in srcache calls into libtorch_cuda directly, so under the default --as-needed the linker drops it
// and CUDA silently disappears (tch::Cuda::device_count() == 0). Only the binary crate's link args count,
// so this lives here and not in a library crate.
fn link_cuda() {
    let Ok(dir) = std::env::var("LIBTORCH") else { return };
    if std::path::Path::new(&dir).join("lib/libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg-bins=-ltorch_cuda");
        println!("cargo:rustc-link-arg-bins=-Wl,--as-needed");
    }
}
