include!("../build/torch_rpath.rs");

// Compiles cpp/aoti_shim.cpp (a C ABI over libtorch's AOTIModelPackageLoader) against the libtorch tch links,
// found the same way: $LIBTORCH (set for this workspace in .cargo/config.toml).
fn main() {
    torch_rpath();
    println!("cargo:rerun-if-changed=cpp/aoti_shim.cpp");
    let Some(root) = std::env::var_os("LIBTORCH").map(std::path::PathBuf::from) else {
        // tch-sys fails the build with its own message when it cannot find libtorch either.
        eprintln!("error: LIBTORCH is not set: the AOTInductor shim (experts/cpp/aoti_shim.cpp) cannot be compiled");
        std::process::exit(1);
    };
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    cc::Build::new()
        .cpp(true)
        .file("cpp/aoti_shim.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag_if_supported("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        // libtorch's headers are noisy under -Wall; the shim's own code is small and reviewed.
        .warnings(false)
        .compile("srcache_aoti_shim");
    println!("cargo:rustc-link-search=native={}", root.join("lib").display());
    for lib in ["torch_cpu", "c10", "torch"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
}
